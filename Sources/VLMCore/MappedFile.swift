#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only memory map of a whole file. Tensors point into it, so a bf16 checkpoint is used in place and
/// costs page cache, not a private f32 copy. The map lives as long as any tensor that references this object.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    public let base: UnsafeRawPointer?

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw ModelFileError(file: path, "cannot open (\(String(cString: strerror(errno))))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw ModelFileError(file: path, "cannot stat (\(String(cString: strerror(errno))))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw ModelFileError(file: path, "is not a regular file")
        }
        size = Int(st.st_size)
        if size == 0 {
            base = nil
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else {
            throw ModelFileError(file: path, "cannot memory-map \(size) bytes (\(String(cString: strerror(errno))))")
        }
        base = UnsafeRawPointer(p)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }

    /// Drops the pages wholly inside `bytes` (a range of this map) from the process's resident set; they are read
    /// from the file again if touched. After a float weight is quantized at load only the quantized copy is used,
    /// so its float pages need not stay resident beside it.
    public func release(_ bytes: UnsafeRawBufferPointer) {
        guard let base, let start = bytes.baseAddress, start >= base, bytes.count > 0 else { return }
        let page = Int(getpagesize())
        let first = (start - base + page - 1) / page * page      // first whole page
        let end = min(size, start - base + bytes.count) / page * page  // end of the last whole page
        guard first < end else { return }
        _ = madvise(UnsafeMutableRawPointer(mutating: base + first), end - first, MADV_DONTNEED)
    }

    /// The bytes in [offset, offset+count), which the caller has checked lie inside the file.
    public func bytes(at offset: Int, count: Int) -> UnsafeRawBufferPointer {
        guard let base, count > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + offset, count: count)
    }
}
