import sys
from pathlib import Path

# importlib import mode puts no test folder on sys.path; our helper module lives beside the tests
sys.path.insert(0, str(Path(__file__).parent))
