import Foundation
import VLMRuntime

/// The KV caches of recent conversations. Chat clients resend the whole history with every request, and several
/// clients take turns on one server: a request gets the cache whose conversation shares the longest prefix with
/// its prompt, so it prefills only what is new (images included), and another client's request in between does
/// not throw that cache away. Bounded by a slot count and by bytes; the least recently used cache goes first.
final class PromptCacheSlots: @unchecked Sendable {
    struct Slot {
        /// The prompt and reply of the request that left this cache: what the conversation's next prompt starts with.
        var text: String
        var state: PromptCacheState
        var lastUsed: UInt64
    }

    let maxSlots: Int
    let maxBytes: Int
    private let lock = NSLock()
    private var slots: [Slot] = []
    private var clock: UInt64 = 0

    init(maxSlots: Int, maxBytes: Int) {
        self.maxSlots = max(0, maxSlots)
        self.maxBytes = max(0, maxBytes)
    }

    /// The cache that best continues `prompt`, removed from the store while a request uses it. nil when no
    /// stored conversation shares at least half of its text with the prompt: reusing it would discard most of
    /// another conversation for little gain, so the request starts from an empty cache instead (as llama.cpp's
    /// slot similarity threshold does).
    func take(bestFor prompt: String) -> PromptCacheState? {
        lock.lock(); defer { lock.unlock() }
        var best: (index: Int, shared: Int)?
        let p = Array(prompt.utf8)
        for (i, slot) in slots.enumerated() {
            let shared = Self.commonPrefix(p, slot.text)
            guard shared * 2 >= slot.text.utf8.count, shared > (best?.shared ?? 0) else { continue }
            best = (i, shared)
        }
        guard let best else { return nil }
        return slots.remove(at: best.index).state
    }

    /// Keeps `state` for the conversation whose text so far is `text`, evicting the least recently used caches
    /// beyond the limits.
    func put(_ state: PromptCacheState, text: String) {
        lock.lock(); defer { lock.unlock() }
        guard maxSlots > 0, state.tokenCount > 0, state.byteCount <= maxBytes else { return }
        clock += 1
        slots.append(Slot(text: text, state: state, lastUsed: clock))
        while slots.count > maxSlots || slots.reduce(0, { $0 + $1.state.byteCount }) > maxBytes {
            guard let oldest = slots.indices.min(by: { slots[$0].lastUsed < slots[$1].lastUsed }) else { break }
            slots.remove(at: oldest)
        }
    }

    /// Caches held and the bytes they take (/health).
    var usage: (slots: Int, bytes: Int, tokens: Int) {
        lock.lock(); defer { lock.unlock() }
        return (slots.count, slots.reduce(0) { $0 + $1.state.byteCount }, slots.reduce(0) { $0 + $1.state.tokenCount })
    }

    func removeAll() {
        lock.lock(); slots = []; lock.unlock()
    }

    private static func commonPrefix(_ a: [UInt8], _ b: String) -> Int {
        var n = 0
        for byte in b.utf8 {
            guard n < a.count, a[n] == byte else { break }
            n += 1
        }
        return n
    }
}
