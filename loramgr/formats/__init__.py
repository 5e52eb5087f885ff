"""Readers and writers of the file formats loramgr touches; each refuses bad input with
:class:`loramgr.errors.InvalidInputError` naming the file and the problem."""
