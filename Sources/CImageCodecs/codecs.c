#include "cimagecodecs.h"

// Linux only: Apple platforms decode through ImageIO (VLMMedia), so this target compiles to nothing there.
#if defined(__linux__)
#include <stdio.h>
#include <jpeglib.h>
#include <jerror.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

void vi_free(void *p) { free(p); }

static void set_error(vi_image *out, const char *msg) {
    snprintf(out->error, sizeof out->error, "%s", msg);
}

// ---------------------------------------------------------------------------------------------------------------
// EXIF orientation (shared by JPEG APP1 and PNG eXIf): a TIFF structure, either byte order, bounds-checked.
// ---------------------------------------------------------------------------------------------------------------
static int exif_orientation(const uint8_t *tiff, size_t n) {
    if (n < 8) return 1;
    int le;
    if (tiff[0] == 'I' && tiff[1] == 'I') le = 1;
    else if (tiff[0] == 'M' && tiff[1] == 'M') le = 0;
    else return 1;
#define RD16(p) (le ? (uint32_t)((p)[0] | ((p)[1] << 8)) : (uint32_t)(((p)[0] << 8) | (p)[1]))
#define RD32(p) (le ? ((uint32_t)(p)[0] | ((uint32_t)(p)[1] << 8) | ((uint32_t)(p)[2] << 16) | ((uint32_t)(p)[3] << 24)) \
                    : (((uint32_t)(p)[0] << 24) | ((uint32_t)(p)[1] << 16) | ((uint32_t)(p)[2] << 8) | (uint32_t)(p)[3]))
    uint32_t ifd = RD32(tiff + 4);
    if (ifd > n || n - ifd < 2) return 1;
    uint32_t count = RD16(tiff + ifd);
    for (uint32_t i = 0; i < count; i++) {
        size_t e = (size_t)ifd + 2 + (size_t)i * 12;
        if (e + 12 > n) return 1;
        if (RD16(tiff + e) == 0x0112) {
            uint32_t type = RD16(tiff + e + 2);
            uint32_t v = type == 3 ? RD16(tiff + e + 8) : (type == 4 ? RD32(tiff + e + 8) : 1);
            return (v >= 1 && v <= 8) ? (int)v : 1;
        }
    }
    return 1;
#undef RD16
#undef RD32
}

// ---------------------------------------------------------------------------------------------------------------
// JPEG
// ---------------------------------------------------------------------------------------------------------------
typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    int truncated;
} jpeg_err;

static void jpeg_error_exit(j_common_ptr cinfo) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    longjmp(e->jump, 1);
}

static void jpeg_emit(j_common_ptr cinfo, int level) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    // Warnings are silent; a premature end of data is an error, as Pillow raises "image file is truncated".
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) e->truncated = 1;
}

int vi_decode_jpeg(const uint8_t *data, size_t size, uint64_t max_pixels, vi_image *out) {
    memset(out, 0, sizeof *out);
    out->orientation = 1;
    struct jpeg_decompress_struct cinfo;
    jpeg_err err;
    uint8_t *volatile rgb = NULL;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = jpeg_error_exit;
    err.pub.emit_message = jpeg_emit;
    err.truncated = 0;
    if (setjmp(err.jump)) {
        char msg[JMSG_LENGTH_MAX];
        (*cinfo.err->format_message)((j_common_ptr)&cinfo, msg);
        snprintf(out->error, sizeof out->error, "corrupt or unsupported JPEG (%s)", msg);
        jpeg_destroy_decompress(&cinfo);
        free(rgb);
        return 0;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, data, (unsigned long)size);
    jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xffff);
    jpeg_read_header(&cinfo, TRUE);
    for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && memcmp(m->data, "Exif\0\0", 6) == 0) {
            out->orientation = exif_orientation(m->data + 6, m->data_length - 6);
            break;
        }
    }
    uint64_t pixels = (uint64_t)cinfo.image_width * cinfo.image_height;
    if (cinfo.image_width == 0 || cinfo.image_height == 0) {
        set_error(out, "JPEG declares an empty image");
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    if (pixels > max_pixels) {
        snprintf(out->error, sizeof out->error, "image is %ux%u = %llu pixels, over the limit of %llu",
                 cinfo.image_width, cinfo.image_height, (unsigned long long)pixels, (unsigned long long)max_pixels);
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK) {
        set_error(out, "CMYK/YCCK JPEG is not supported; convert the image to RGB");
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    // Pillow's settings: integer slow DCT, fancy upsampling, RGB output (grayscale replicated).
    cinfo.out_color_space = JCS_RGB;
    cinfo.dct_method = JDCT_ISLOW;
    cinfo.do_fancy_upsampling = TRUE;
    jpeg_start_decompress(&cinfo);
    size_t stride = (size_t)cinfo.output_width * 3;
    rgb = malloc(stride * cinfo.output_height);
    if (!rgb) {
        set_error(out, "out of memory");
        jpeg_destroy_decompress(&cinfo);
        return 0;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = rgb + stride * cinfo.output_scanline;
        jpeg_read_scanlines(&cinfo, &row, 1);
        if (err.truncated) break;
    }
    if (err.truncated) {
        set_error(out, "JPEG data ends early (truncated file)");
        jpeg_destroy_decompress(&cinfo);
        free(rgb);
        return 0;
    }
    jpeg_finish_decompress(&cinfo);
    out->width = (int)cinfo.output_width;
    out->height = (int)cinfo.output_height;
    out->rgb = rgb;
    jpeg_destroy_decompress(&cinfo);
    return 1;
}

// ---------------------------------------------------------------------------------------------------------------
// PNG
// ---------------------------------------------------------------------------------------------------------------
typedef struct {
    const uint8_t *data;
    size_t size, pos;
    char message[200];
} png_source;

static void png_read_mem(png_structp png, png_bytep dst, png_size_t n) {
    png_source *s = (png_source *)png_get_io_ptr(png);
    if (s->size - s->pos < n) png_error(png, "PNG data ends early (truncated file)");
    memcpy(dst, s->data + s->pos, n);
    s->pos += n;
}

static void png_on_error(png_structp png, png_const_charp msg) {
    png_source *s = (png_source *)png_get_error_ptr(png);
    snprintf(s->message, sizeof s->message, "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

int vi_decode_png(const uint8_t *data, size_t size, uint64_t max_pixels, vi_image *out) {
    memset(out, 0, sizeof *out);
    out->orientation = 1;
    png_source src = {data, size, 0, {0}};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error, png_on_warning);
    if (!png) { set_error(out, "out of memory"); return 0; }
    png_infop info = png_create_info_struct(png);
    uint8_t *volatile raw = NULL;
    uint8_t *volatile rgb = NULL;
    png_bytep *volatile rows = NULL;
    if (!info || setjmp(png_jmpbuf(png))) {
        snprintf(out->error, sizeof out->error, "corrupt or unsupported PNG (%s)", src.message[0] ? src.message : "out of memory");
        png_destroy_read_struct(&png, info ? &info : NULL, NULL);
        free(raw); free(rgb); free(rows);
        return 0;
    }
    png_set_read_fn(png, &src, png_read_mem);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int depth = png_get_bit_depth(png, info), color = png_get_color_type(png, info);
    if ((uint64_t)w * h > max_pixels) {
        snprintf(out->error, sizeof out->error, "image is %ux%u = %llu pixels, over the limit of %llu",
                 (unsigned)w, (unsigned)h, (unsigned long long)w * h, (unsigned long long)max_pixels);
        png_destroy_read_struct(&png, &info, NULL);
        return 0;
    }
#ifdef PNG_eXIf_SUPPORTED
    {
        png_uint_32 n = 0;
        png_bytep exif = NULL;
        if (png_get_eXIf_1(png, info, &n, &exif) && exif) out->orientation = exif_orientation(exif, n);
    }
#endif
    // Pillow: 16-bit colour keeps the high byte; 16-bit gray ("I;16") is clipped to 255 by convert("RGB").
    int gray16 = color == PNG_COLOR_TYPE_GRAY && depth == 16;  // (gray+alpha 16 is "LA", high byte, like RGB)
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if ((color == PNG_COLOR_TYPE_GRAY) && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (!gray16 && depth == 16) png_set_strip_16(png);
    if (gray16) png_set_swap(png);  // read 16-bit samples little-endian so we can clip them below
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    size_t rowbytes = png_get_rowbytes(png, info);
    int channels = png_get_channels(png, info);
    raw = malloc(rowbytes * h);
    rows = malloc(sizeof(png_bytep) * h);
    rgb = malloc((size_t)w * h * 3);
    if (!raw || !rows || !rgb) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) rows[y] = raw + rowbytes * y;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    for (png_uint_32 y = 0; y < h; y++) {
        const uint8_t *r = rows[y];
        uint8_t *o = rgb + (size_t)y * w * 3;
        for (png_uint_32 x = 0; x < w; x++, o += 3) {
            if (gray16) {
                const uint8_t *p = r + (size_t)x * channels * 2;
                unsigned v = p[0] | (p[1] << 8);
                o[0] = o[1] = o[2] = (uint8_t)(v > 255 ? 255 : v);
            } else if (channels <= 2) {  // gray, gray + alpha: alpha dropped
                o[0] = o[1] = o[2] = r[(size_t)x * channels];
            } else {  // RGB, RGBA (alpha dropped), palette expanded to RGB(A)
                const uint8_t *p = r + (size_t)x * channels;
                o[0] = p[0]; o[1] = p[1]; o[2] = p[2];
            }
        }
    }
    out->width = (int)w;
    out->height = (int)h;
    out->rgb = rgb;
    png_destroy_read_struct(&png, &info, NULL);
    free(raw);
    free(rows);
    return 1;
}

#endif  // __linux__
