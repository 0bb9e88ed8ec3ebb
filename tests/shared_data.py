"""What the shared data (``../shared``) holds, written out once as the tests expect it,
independently of the code under test."""

# Every variant the local weights mirror holds (Google's TF Lite releases), sorted.
MIRROR_NAMES = [
    "v1-0.25-128",
    "v1-0.5-160",
    "v1-0.75-192",
    "v1-0.75-224",
    "v1-1.0-224",
    "v2-1.0-224",
    "v3-small-1.0-224",
]
