"""datagen: phi-style textbook-quality synthetic pretraining corpora."""

from pathlib import Path

__version__ = "0.1.0"

# prompts/ and data/ live at the top of the project, beside this package.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
