/// Keys and values of every layer for the tokens seen so far. Memory grows in blocks of `blockTokens` as the
/// context is used, up to `maxTokens`, so a short chat does not pay for the model's whole context window.
/// Layout per layer: [capacity, kvHeads * headDim] for K and the same for V.
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let rowWidth: Int
    public let maxTokens: Int
    public let blockTokens: Int
    /// Tokens currently held (the next token's position).
    public private(set) var count = 0
    public private(set) var capacity = 0
    private var keys: [UnsafeMutablePointer<Float>] = []
    private var values: [UnsafeMutablePointer<Float>] = []

    public init(layers: Int, kvHeads: Int, headDim: Int, maxTokens: Int, blockTokens: Int = 256) {
        self.layers = layers
        self.rowWidth = kvHeads * headDim
        self.maxTokens = maxTokens
        self.blockTokens = max(1, blockTokens)
    }

    deinit { release() }

    private func release() {
        for p in keys { p.deallocate() }
        for p in values { p.deallocate() }
        keys = []
        values = []
        capacity = 0
    }

    /// Bytes held for keys and values.
    public var byteCount: Int { 2 * layers * capacity * rowWidth * MemoryLayout<Float>.size }

    /// Makes room for `newTokens` more tokens. The caller has checked `count + newTokens <= maxTokens`.
    public func reserve(_ newTokens: Int) {
        let needed = count + newTokens
        guard needed > capacity else { return }
        let newCapacity = min(maxTokens, ((needed + blockTokens - 1) / blockTokens) * blockTokens)
        let oldKeys = keys, oldValues = values
        keys = (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: newCapacity * rowWidth) }
        values = (0..<layers).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: newCapacity * rowWidth) }
        for l in 0..<oldKeys.count {
            keys[l].update(from: oldKeys[l], count: count * rowWidth)
            values[l].update(from: oldValues[l], count: count * rowWidth)
            oldKeys[l].deallocate()
            oldValues[l].deallocate()
        }
        capacity = newCapacity
    }

    public func keys(layer: Int) -> UnsafeMutablePointer<Float> { keys[layer] }
    public func values(layer: Int) -> UnsafeMutablePointer<Float> { values[layer] }

    /// Marks `n` more tokens as written (after every layer stored its rows at positions count..<count+n).
    public func advance(by n: Int) { count += n }

    /// Forgets everything after the first `tokens` tokens (rolls back to a common prefix).
    public func truncate(to tokens: Int) { count = max(0, min(count, tokens)) }

    /// Empties the cache and gives its memory back.
    public func reset() {
        count = 0
        release()
    }
}
