"""Every process a test starts (``sdn-egress`` console script, ``python -m``)
imports the code of this checkout: the venv's editable install may point at
another checkout (a git worktree), which would test that one instead."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
