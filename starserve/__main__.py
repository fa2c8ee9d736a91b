from starserve.cli.main import main

main()
