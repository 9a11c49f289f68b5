"""Small helpers every stage uses: timestamps, file permissions, dependency reliance checks."""
