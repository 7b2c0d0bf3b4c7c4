"""nanogpt_course: build and train a GPT from scratch."""
__version__ = "0.1.0"
