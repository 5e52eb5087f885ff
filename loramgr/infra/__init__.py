"""Infrastructure the workflows share: the content-addressed store and its one-pass copy, file
reading with limits, progress bars and the garbage-collector pause."""
