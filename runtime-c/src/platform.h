/*
 * platform.h -- the two things the C library cannot say: what kind of file a path is (never open a
 * FIFO, a device or a directory as if it were a file: a FIFO blocks the open, /dev/zero never ends),
 * and where a path really leads (a link out of the plan's directory is refused, as the Python reader
 * refuses it). POSIX (Android NDK, Linux, macOS); on Windows the checks use the CRT's _stat64 only.
 */
#ifndef LMP_PLATFORM_H
#define LMP_PLATFORM_H

#include <stdint.h>
#include <stdio.h>

/* Open PATH for reading if it is a regular file, never blocking: stat first, open non-blocking, then
   check the opened file is the one stat saw. On success *size is its length; on failure NULL and *why
   says what it is ("missing", "not a regular file (a FIFO, a device or a directory)", ...). */
FILE *lmp_open_regular(const char *path, uint64_t *size, const char **why);

/* The canonical absolute form of PATH (every link resolved), malloc'ed; NULL if it cannot be resolved. */
char *lmp_real_path(const char *path);

/* 1 when PATH resolves to DIR (already canonical) or below it; 0 when it leads elsewhere or nowhere. */
int lmp_inside(const char *dir, const char *path);

#endif
