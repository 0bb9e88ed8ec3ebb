"""``python -m app`` serves, like ``mobilenet-serve serve``."""

import sys

from app.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
