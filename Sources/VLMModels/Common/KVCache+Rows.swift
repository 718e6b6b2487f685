/// Export and import of a cache's rows, for saving a conversation and resuming it later without running the
/// model again. Rows are those of positions 0 ..< count, `rowWidth` floats each, keys and values per layer.
extension KVCache {
    /// Calls `body(layer, keys, values)` for every layer with that layer's first `count` rows (`count * rowWidth`
    /// floats each). The buffers are valid only inside `body`.
    public func forEachLayerRows(_ body: (Int, UnsafeBufferPointer<Float>, UnsafeBufferPointer<Float>) throws -> Void) rethrows {
        let n = count * rowWidth
        for layer in 0..<layers {
            if n == 0 {
                try body(layer, UnsafeBufferPointer(start: nil, count: 0), UnsafeBufferPointer(start: nil, count: 0))
            } else {
                try body(layer, UnsafeBufferPointer(start: keys(layer: layer), count: n),
                         UnsafeBufferPointer(start: values(layer: layer), count: n))
            }
        }
    }

    /// Replaces the whole contents by `tokens` rows per layer that `fill(layer, keys, values)` writes (each
    /// buffer `tokens * rowWidth` floats). If `fill` throws, the cache is left empty.
    public func replaceRows(tokens: Int, fill: (Int, UnsafeMutableBufferPointer<Float>, UnsafeMutableBufferPointer<Float>) throws -> Void) throws {
        precondition(tokens >= 0 && tokens <= maxTokens, "KVCache.replaceRows: \(tokens) rows for a cache of \(maxTokens)")
        reset()
        guard tokens > 0 else { return }
        reserve(tokens)
        let n = tokens * rowWidth
        do {
            for layer in 0..<layers {
                try fill(layer, UnsafeMutableBufferPointer(start: keys(layer: layer), count: n),
                         UnsafeMutableBufferPointer(start: values(layer: layer), count: n))
            }
        } catch {
            reset()
            throw error
        }
        advance(by: tokens)
    }
}
