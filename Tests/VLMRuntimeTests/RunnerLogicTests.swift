import Foundation
import VLMRuntime
import VLMTokenizers
import XCTest

/// The generation loop's control flow on a mock model: end of sequence, limits, stop requests, stop strings,
/// context limits, and cache positions across calls.
final class RunnerLogicTests: XCTestCase {
    static let tokenizer: Tokenizer = {
        // Any real tokenizer works for decoding small ids; the committed Qwen2-style one is small.
        try! Tokenizer(directory: Fixtures.root.appendingPathComponent("tokenizers/qwen2-style"))
    }()

    func runner(_ model: MockLanguageModel) -> TextRunner {
        TextRunner(model: model, tokenizer: Self.tokenizer)
    }

    func greedy(_ n: Int) -> GenerationConfig {
        var c = GenerationConfig()
        c.maxNewTokens = n
        return c
    }

    func testStopsAtEndOfSequenceWithoutEmittingIt() throws {
        // 5 → 6 → 7 → 0 (EOS)
        let model = MockLanguageModel { $0 == 7 ? 0 : $0 + 1 }
        let r = runner(model)
        var streamed: [Int] = []
        let result = try r.generate([.tokens([3, 4, 5])], config: greedy(20)) { streamed.append($0.id) }
        XCTAssertEqual(result.tokenIDs, [6, 7])
        XCTAssertEqual(result.stopReason, .endOfSequence)
        XCTAssertEqual(streamed.filter { $0 != 0 }, [6, 7])
        XCTAssertEqual(result.stats.promptTokens, 3)
        XCTAssertEqual(result.stats.generatedTokens, 2)
    }

    func testIgnoreEOSAndMaxNewTokens() throws {
        let model = MockLanguageModel { _ in 0 }
        var c = greedy(4)
        c.ignoreEOS = true
        let result = try runner(model).generate([.tokens([1])], config: c) { _ in }
        XCTAssertEqual(result.tokenIDs, [0, 0, 0, 0])
        XCTAssertEqual(result.stopReason, .maxTokens)
        // Prefill of 1 row, then one step per generated token except the last.
        XCTAssertEqual(model.forwardCalls.map(\.rows), [1, 1, 1, 1])
        XCTAssertEqual(model.forwardCalls.map(\.position), [0, 1, 2, 3])
    }

    func testMaxNewTokensZeroGeneratesNothing() throws {
        let model = MockLanguageModel { $0 + 1 }
        let result = try runner(model).generate([.tokens([1, 2])], config: greedy(0)) { _ in }
        XCTAssertEqual(result.tokenIDs, [])
        XCTAssertEqual(result.stopReason, .maxTokens)
    }

    func testSecondCallContinuesTheCacheAndResetEmptiesIt() throws {
        let model = MockLanguageModel { ($0 % 40) + 1 }
        let r = runner(model)
        let first = try r.generate([.tokens([1, 2, 3])], config: greedy(3)) { _ in }
        XCTAssertEqual(first.tokenIDs, [4, 5, 6])
        // 3 prompt + 2 fed generated tokens are cached.
        XCTAssertEqual(r.cachedTokenIDs, [1, 2, 3, 4, 5])
        let second = try r.generate([.tokens([10])], config: greedy(1)) { _ in }
        XCTAssertEqual(second.tokenIDs, [11])
        XCTAssertEqual(second.stats.cachedTokens, 5)
        XCTAssertEqual(model.forwardCalls.last?.position, 5)
        r.reset()
        XCTAssertEqual(r.cachedTokenIDs, [])
        _ = try r.generate([.tokens([7])], config: greedy(1)) { _ in }
        XCTAssertEqual(model.forwardCalls.last?.position, 0)
    }

    func testStopFromAnotherThreadEndsWithinOneToken() throws {
        let model = MockLanguageModel { ($0 % 40) + 1 }
        let r = runner(model)
        var c = greedy(1000)
        c.ignoreEOS = true
        var calls = 0
        model.onForward = {
            calls += 1
            if calls == 5 { DispatchQueue.global().sync { r.stop() } }
        }
        let result = try r.generate([.tokens([1])], config: c) { _ in }
        XCTAssertEqual(result.stopReason, .cancelled)
        XCTAssertEqual(result.tokenIDs.count, 4, "the stop must take effect before the next token")
    }

    func testPromptLongerThanContextIsAClearError() throws {
        let model = MockLanguageModel(maxContextLength: 8) { $0 }
        XCTAssertThrowsError(try runner(model).generate([.tokens(Array(1...9))], config: greedy(1)) { _ in }) { error in
            XCTAssertEqual(error as? RunnerError, .promptTooLong(promptTokens: 9, limit: 8))
            XCTAssertTrue("\(error)".contains("9 tokens") && "\(error)".contains("8"))
        }
        var c = greedy(1)
        c.seqLen = 4
        XCTAssertThrowsError(try runner(model).generate([.tokens(Array(1...5))], config: c) { _ in }) { error in
            XCTAssertEqual(error as? RunnerError, .promptTooLong(promptTokens: 5, limit: 4))
        }
    }

    func testGenerationEndsWhenTheContextIsFull() throws {
        let model = MockLanguageModel(maxContextLength: 8) { ($0 % 40) + 1 }
        let result = try runner(model).generate([.tokens([1, 2, 3, 4, 5, 6])], config: greedy(100)) { _ in }
        // 6 prompt positions + 2 fed tokens fill 8 positions; the third token is sampled from the last logits.
        XCTAssertEqual(result.tokenIDs.count, 3)
        XCTAssertEqual(result.stopReason, .contextFull)
    }

    func testTokenOutsideVocabularyIsAnError() {
        let model = MockLanguageModel { $0 }
        XCTAssertThrowsError(try runner(model).generate([.tokens([3, 999])], config: greedy(1)) { _ in }) { error in
            XCTAssertTrue("\(error)".contains("999"))
        }
    }

    func testStopStringCutsTheReply() throws {
        // Find two ids whose decoded texts are distinct, non-empty and printable, then stop on the second's text.
        let tok = Self.tokenizer
        let candidates = (30..<200).filter { id in
            let s = tok.decode([id]); return s.count >= 1 && s.unicodeScalars.allSatisfy { $0.properties.isAlphabetic }
        }
        let a = candidates[0], b = try XCTUnwrap(candidates.first { !tok.decode([$0]).contains(tok.decode([a])) && !tok.decode([a]).contains(tok.decode([$0])) })
        let model = MockLanguageModel(vocabularySize: 300) { $0 == a ? b : a }
        var c = greedy(50)
        c.ignoreEOS = true
        c.stopStrings = [tok.decode([b])]
        var streamed = ""
        let result = try runner(model).generate([.tokens([b])], config: c) { streamed += $0.text }
        XCTAssertEqual(result.stopReason, .stopString)
        XCTAssertEqual(result.text, tok.decode([a]))
        XCTAssertEqual(streamed, result.text, "streamed text must not include the stop string")
    }

    func testInvalidSamplingOptionsAreRejected() {
        let model = MockLanguageModel { $0 }
        for mutate in [{ (c: inout GenerationConfig) in c.topP = 0 }, { $0.temperature = -1 }, { $0.maxNewTokens = -2 }, { $0.minP = 2 }] {
            var c = greedy(1)
            mutate(&c)
            XCTAssertThrowsError(try runner(model).generate([.tokens([1])], config: c) { _ in })
        }
    }

    func testAsyncStreamDeliversTokensThenResult() async throws {
        let model = MockLanguageModel { $0 == 9 ? 0 : $0 + 1 }
        let r = runner(model)
        var ids: [Int] = []
        var final: GenerationResult?
        for try await event in r.stream([.tokens([5])], config: greedy(10)) {
            switch event {
            case .token(let t): if t.id != 0 { ids.append(t.id) }
            case .finished(let result): final = result
            }
        }
        XCTAssertEqual(ids, [6, 7, 8, 9])
        XCTAssertEqual(final?.tokenIDs, [6, 7, 8, 9])
    }
}
