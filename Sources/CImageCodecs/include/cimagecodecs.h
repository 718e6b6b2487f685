// CImageCodecs: libjpeg-turbo and libpng behind two calls that never exit the process and never longjmp into
// Swift. Both libraries report errors by longjmp; the setjmp lives here, in C, and failures come back as
// messages. Output is 8-bit RGB, interleaved, as Pillow's convert("RGB") gives it.
#ifndef CIMAGECODECS_H
#define CIMAGECODECS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int width;
    int height;
    /// malloc'ed width*height*3 bytes (caller frees with vi_free) or NULL on failure.
    uint8_t *rgb;
    /// EXIF orientation 1-8 found in the file (1 when absent or unreadable).
    int orientation;
    /// Failure description, empty on success.
    char error[256];
} vi_image;

/// Decodes a JPEG. Images with more than max_pixels pixels are refused from the header, before any allocation.
int vi_decode_jpeg(const uint8_t *data, size_t size, uint64_t max_pixels, vi_image *out);

/// Decodes a PNG (any bit depth, palette, gray, alpha, interlaced). Alpha is dropped as convert("RGB") does.
int vi_decode_png(const uint8_t *data, size_t size, uint64_t max_pixels, vi_image *out);

void vi_free(void *p);

#ifdef __cplusplus
}
#endif

#endif
