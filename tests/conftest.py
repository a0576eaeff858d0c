import sys
from pathlib import Path

# The scripts live in the repository root as single files; tests import them as modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
