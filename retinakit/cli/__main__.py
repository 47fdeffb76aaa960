"""``python -m retinakit.cli`` = the ``retinakit`` console command."""
import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
