"""Your exercises: edit the functions here; `make grade` scores them (see the book)."""
