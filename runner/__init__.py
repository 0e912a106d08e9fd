"""gridrun: run a study of image-model trainings on Ray and compare the runs."""

__version__ = "0.1.0"
