/*
 * platform.c -- file kind and real-path checks (see platform.h). The only platform calls of the
 * library: stat/open/fstat/realpath on POSIX, _stat64/_fullpath on Windows.
 */
#if !defined(_WIN32)
#define _XOPEN_SOURCE 700 /* POSIX 2008 with realpath */
#endif

#include "platform.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#include <sys/stat.h>

FILE *lmp_open_regular(const char *path, uint64_t *size, const char **why) {
    struct _stat64 st;
    FILE *f;
    if (_stat64(path, &st) != 0) {
        *why = errno == ENOENT ? "missing" : "unreadable";
        return NULL;
    }
    if ((st.st_mode & _S_IFMT) != _S_IFREG) {
        *why = "not a regular file (a device or a directory)";
        return NULL;
    }
    f = fopen(path, "rb");
    if (!f) *why = "unreadable";
    *size = (uint64_t)st.st_size;
    return f;
}

char *lmp_real_path(const char *path) { return _fullpath(NULL, path, 0); }

#else
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif

FILE *lmp_open_regular(const char *path, uint64_t *size, const char **why) {
    struct stat seen, opened;
    int fd;
    FILE *f;
    if (stat(path, &seen) != 0) {
        *why = errno == ENOENT ? "missing" : "unreadable";
        return NULL;
    }
    if (!S_ISREG(seen.st_mode)) {
        *why = "not a regular file (a FIFO, a device or a directory)";
        return NULL;
    }
    fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        *why = "unreadable";
        return NULL;
    }
    if (fstat(fd, &opened) != 0 || !S_ISREG(opened.st_mode) || opened.st_dev != seen.st_dev ||
        opened.st_ino != seen.st_ino) {
        close(fd);
        *why = "replaced while it was being opened";
        return NULL;
    }
    f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        *why = "unreadable";
        return NULL;
    }
    *size = (uint64_t)opened.st_size;
    return f;
}

char *lmp_real_path(const char *path) { return realpath(path, NULL); }
#endif

int lmp_inside(const char *dir, const char *path) {
    char *real = lmp_real_path(path);
    size_t n = strlen(dir);
    int ok;
    if (!real) return 0;
    ok = strcmp(real, dir) == 0 ||
         (strncmp(real, dir, n) == 0 && (real[n] == '/' || real[n] == '\\' || (n > 0 && (dir[n - 1] == '/'))));
    free(real);
    return ok;
}
