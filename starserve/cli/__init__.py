"""The `starserve` command line. Each subsystem adds its commands in a module of its own here."""
