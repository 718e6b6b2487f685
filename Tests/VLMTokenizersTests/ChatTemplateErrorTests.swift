import Foundation
import XCTest

@testable import VLMTokenizers

/// Errors name the construct and the template line; hostile templates stop with an error instead of crashing
/// or hanging.
final class ChatTemplateErrorTests: XCTestCase {
    private func parseError(_ source: String, file: StaticString = #filePath, line: UInt = #line) -> ChatTemplateError? {
        do {
            _ = try ChatTemplate(source: source)
            XCTFail("expected a parse error", file: file, line: line)
        } catch let error as ChatTemplateError {
            return error
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
        return nil
    }

    private func renderError(
        _ source: String, _ context: [String: JinjaValue] = [:], options: JinjaRenderOptions = JinjaRenderOptions(),
        file: StaticString = #filePath, line: UInt = #line
    ) -> ChatTemplateError? {
        do {
            let output = try ChatTemplate(source: source).render(context: context, options: options)
            XCTFail("expected a render error, got \(output.prefix(80).debugDescription)", file: file, line: line)
        } catch let error as ChatTemplateError {
            return error
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
        return nil
    }

    // MARK: - Unsupported and invalid syntax

    func testUnsupportedStatementNamesConstructAndLine() {
        let error = parseError("{{ bos_token }}\n{% for m in messages %}\n{{ m }}\n{% endfor %}\n\n\n{% include 'extra.jinja' %}")
        XCTAssertEqual(error?.kind, .unsupported)
        XCTAssertEqual(error?.line, 7)
        XCTAssertEqual(error?.description, "chat template line 7: unsupported statement 'include'")
        for tag in ["extends", "import", "from", "block", "autoescape"] {
            let other = parseError("x\n{% \(tag) 'a' %}")
            XCTAssertEqual(other?.kind, .unsupported, tag)
            XCTAssertEqual(other?.line, 2, tag)
            XCTAssertEqual(other?.message, "unsupported statement '\(tag)'")
        }
    }

    func testUnsupportedRecursiveLoop() {
        let error = parseError("a\n{% for x in xs recursive %}{{ loop(x.children) }}{% endfor %}")
        XCTAssertEqual(error?.kind, .unsupported)
        XCTAssertEqual(error?.line, 2)
        XCTAssertEqual(error?.message, "unsupported recursive for loop")
    }

    func testUnknownTag() {
        let error = parseError("a\nb\n{%- do ns.items.append(1) %}")
        XCTAssertEqual(error?.kind, .syntax)
        XCTAssertEqual(error?.line, 3)
        XCTAssertEqual(error?.message, "unknown tag 'do'")
    }

    func testUnclosedBlockNamesTheBlockAndItsLine() {
        let error = parseError("{{ x }}\n{% if x %}\n  {% for m in messages %}\n    {{ m }}\n{% endif %}")
        XCTAssertEqual(error?.kind, .syntax)
        XCTAssertEqual(error?.line, 5)
        XCTAssertEqual(
            error?.message,
            "unknown tag 'endif'; the innermost open block is 'for' from line 3, which expects 'endfor' or 'else'")

        let eof = parseError("line1\n{% for x in y %}\nbody")
        XCTAssertEqual(eof?.line, 2)
        XCTAssertEqual(
            eof?.message,
            "unexpected end of template: the 'for' block opened on line 2 is not closed (expected '{% endfor %}' or '{% else %}')")
    }

    func testSyntaxErrorsCarryLines() {
        XCTAssertEqual(parseError("a\n\n{{ 1 + }}")?.line, 3)
        XCTAssertEqual(parseError("{{ 'unterminated }}")?.message, "unterminated string literal")
        XCTAssertEqual(parseError("a\n{# never closed")?.message, "missing end of comment tag '#}'")
        XCTAssertEqual(parseError("a\n{{ x")?.line, 2)
        XCTAssertEqual(parseError("{{ [1, 2) }}")?.message, "unexpected ')', expected ']'")
        XCTAssertEqual(parseError("{% for x in xs %}{% endfor %}\n{% break %}")?.message, "'break' outside a for loop")
        XCTAssertEqual(parseError("{% macro m(a=1, b) %}{% endmacro %}")?.message, "non-default argument follows default argument")
        XCTAssertEqual(parseError("{% set 1 = 2 %}")?.kind, .syntax)
        XCTAssertEqual(parseError("{{ x is defined is defined }}")?.kind, .syntax)
        XCTAssertEqual(parseError("{% raw %}never closed")?.message, "missing end of raw directive '{% endraw %}'")
        XCTAssertEqual(parseError("{{ '\\xZZ' }}")?.kind, .syntax)
        XCTAssertEqual(parseError("{{ 99999999999999999999 }}")?.kind, .unsupported)
    }

    // MARK: - Runtime errors

    func testRaiseExceptionKeepsItsMessageAndLine() {
        let source = """
            {%- for message in messages %}
            {%- if message.role not in ['user', 'assistant'] %}
            {{- raise_exception('Only user and assistant roles are supported, got ' + message.role) }}
            {%- endif %}
            {%- endfor %}
            """
        let template = try? ChatTemplate(source: source)
        XCTAssertThrowsError(
            try template?.render(messages: [ChatMessage(role: "tool", text: "x")], addGenerationPrompt: false)
        ) { error in
            let error = error as? ChatTemplateError
            XCTAssertEqual(error?.kind, .raised)
            XCTAssertEqual(error?.line, 3)
            XCTAssertEqual(error?.message, "Only user and assistant roles are supported, got tool")
            XCTAssertEqual(error?.description, "chat template line 3: Only user and assistant roles are supported, got tool")
        }
    }

    func testRuntimeErrorsCarryMessageAndLine() {
        let undefined = renderError("{{ 1 }}\n{{ x.y }}")
        XCTAssertEqual(undefined?.kind, .runtime)
        XCTAssertEqual(undefined?.line, 2)
        XCTAssertEqual(undefined?.message, "'x' is undefined")

        let filter = renderError("a\nb\n{{ 'x' | frobnicate }}")
        XCTAssertEqual(filter?.line, 3)
        XCTAssertEqual(filter?.message, "No filter named 'frobnicate'.")

        let unsupportedFilter = renderError("{{ [1] | groupby('a') }}")
        XCTAssertEqual(unsupportedFilter?.kind, .unsupported)
        XCTAssertEqual(unsupportedFilter?.message, "unsupported filter 'groupby'")

        let types = renderError("{%- set a = 1 %}\n{{- a ~ 'x' }}\n{{- 'x' - 1 }}")
        XCTAssertEqual(types?.line, 3)
        XCTAssertEqual(types?.message, "unsupported operand type(s) for -: 'str' and 'int'")

        let overflow = renderError("{{ 2 ** 64 }}")
        XCTAssertEqual(overflow?.kind, .unsupported)

        let unpack = renderError("x\n{% for a, b in [[1, 2, 3]] %}{% endfor %}")
        XCTAssertEqual(unpack?.line, 2)
        XCTAssertEqual(unpack?.message, "too many values to unpack (expected 2)")
    }

    // MARK: - Limits

    func testInfiniteRecursionStops() {
        let error = renderError("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}\n{{ f(0) }}")
        XCTAssertEqual(error?.kind, .limit)
        XCTAssertEqual(error?.message.hasPrefix("macro calls nested more than 64 deep"), true, error?.message ?? "")
    }

    func testMutualRecursionThroughCallerStops() {
        let error = renderError(
            "{% macro a() %}{% call b() %}x{% endcall %}{% endmacro %}{% macro b() %}{{ a() }}{% endmacro %}{{ a() }}")
        XCTAssertEqual(error?.kind, .limit)
    }

    func testRunawayLoopStops() {
        var options = JinjaRenderOptions()
        options.maxSteps = 200_000
        let error = renderError(
            "{% for a in range(100000) %}{% for b in range(100000) %}{{ '' }}{% endfor %}{% endfor %}", options: options)
        XCTAssertEqual(error?.kind, .limit)
        XCTAssertEqual(error?.message, "the template ran more than 200000 steps (a runaway loop?)")
    }

    func testStepBudgetEndsQuickly() {
        // A million steps take well under a second in release builds; the default budget is a few of these.
        var options = JinjaRenderOptions()
        options.maxSteps = 1_000_000
        let start = Date()
        let error = renderError(
            "{% for a in range(100000) %}{% for b in range(100000) %}{{ b }}{% endfor %}{% endfor %}", options: options)
        XCTAssertEqual(error?.kind, .limit)
        XCTAssertLessThan(Date().timeIntervalSince(start), 10)
    }

    func testOutputSizeLimit() {
        var options = JinjaRenderOptions()
        options.maxOutputBytes = 1 << 20
        let doubling = renderError(
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
            options: options)
        XCTAssertEqual(doubling?.kind, .limit)
        XCTAssertEqual(renderError("{{ 'x' * 100000000000 }}")?.kind, .limit)
        XCTAssertEqual(renderError("{{ [1, 2] * 100000000000 }}")?.kind, .limit)
        let printing = renderError("{% for i in range(100000) %}{{ 'abcdefghijklmnopq' }}{% endfor %}", options: options)
        XCTAssertEqual(printing?.kind, .limit)
        // Amplifiers stop while building, not after: a list of big strings printed, joined, dumped, replaced.
        let big = "{% set s = 'x' * 500000 %}"
        for amplifier in [
            "{{ [s] * 100 }}", "{{ ([s] * 100) | join }}", "{{ ([s] * 100) | tojson }}", "{{ s | replace('', 'abc') }}",
            "{{ s.replace('x', 'yyyyyy') }}", "{{ ([s] * 100) | string }}", "{{ '%s' % ([s] * 100) }}",
            "{{ '{}'.format([s] * 100) }}", "{{ ('a\n' * 10000) | indent(s) }}", "{{ ','.join([s] * 100) }}",
        ] {
            XCTAssertEqual(renderError(big + amplifier, options: options)?.kind, .limit, amplifier)
        }
        XCTAssertEqual(
            try ChatTemplate(source: big + "{{ ([s] * 1000) | length }}").render(context: [:], options: options), "1000")
    }

    func testRangeLimitMatchesTheSandbox() {
        XCTAssertEqual(
            renderError("{{ range(100001) | length }}")?.message,
            "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).")
        XCTAssertEqual(try ChatTemplate(source: "{{ range(100000) | length }}").render(context: [:]), "100000")
    }

    func testDeepNestingIsRefusedNotCrashing() {
        let parentheses = "{{ " + String(repeating: "(", count: 5000) + "1" + String(repeating: ")", count: 5000) + " }}"
        XCTAssertEqual(parseError(parentheses)?.kind, .limit)
        let negations = "{{ " + String(repeating: "not ", count: 5000) + "x }}"
        XCTAssertEqual(parseError(negations)?.kind, .limit)
        let minus = "{{ " + String(repeating: "-", count: 5000) + "1 }}"
        XCTAssertEqual(parseError(minus)?.kind, .limit)
        let blocks = String(repeating: "{% if true %}", count: 5000) + String(repeating: "{% endif %}", count: 5000)
        XCTAssertEqual(parseError(blocks)?.kind, .limit)
        let lists = "{{ " + String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000) + " }}"
        XCTAssertEqual(parseError(lists)?.kind, .limit)
        // Long flat chains nest the syntax tree as deeply as parentheses do.
        XCTAssertEqual(parseError("{{ 1" + String(repeating: " + 1", count: 5000) + " }}")?.kind, .limit)
        XCTAssertEqual(parseError("{{ x" + String(repeating: "|trim", count: 5000) + " }}")?.kind, .limit)
        XCTAssertEqual(parseError("{{ x" + String(repeating: ".a", count: 5000) + " }}")?.kind, .limit)
        XCTAssertEqual(parseError("{{ x" + String(repeating: " or x", count: 5000) + " }}")?.kind, .limit)
        // Flat sequences are fine: many statements, long concatenations, long literals.
        let many = String(repeating: "{% if true %}a{% endif %}", count: 5000)
        XCTAssertEqual(try ChatTemplate(source: many).render(context: [:]).count, 5000)
        let concat = "{{ 'a'" + String(repeating: " ~ 'a'", count: 3000) + " }}"
        XCTAssertEqual(try ChatTemplate(source: concat).render(context: [:]).count, 3001)
    }

    func testDeeplyNestedValuesAreRefused() {
        let nested = renderError(
            "{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}")
        XCTAssertEqual(nested?.kind, .limit)
        XCTAssertEqual(nested?.message, "the template built a value nested more than 256 levels deep")
        let chained = renderError(
            "{% set ns = namespace(x=none) %}{% for i in range(100000) %}{% set ns.x = namespace(up=ns.x) %}{% endfor %}")
        XCTAssertEqual(chained?.kind, .limit)
    }

    func testSelfReferencingNamespacePrintsWithoutRecursing() throws {
        let template = try ChatTemplate(source: "{% set ns = namespace(a=1) %}{% set ns.me = ns %}{{ ns }}")
        XCTAssertEqual(try template.render(context: [:]), "<Namespace {'a': 1, 'me': <Namespace {...}>}>")
    }

    /// Random token soup must give a result or a ChatTemplateError: never a crash, trap or hang.
    func testRandomTemplatesNeverCrash() {
        var generator = ChatTemplateFuzzRandom(seed: 0x5EED)
        let pieces = [
            "{{", "}}", "{%", "%}", "{#", "#}", "{%-", "-%}", "{{-", "-}}", "for", "in", "if", "else", "elif",
            "endif", "endfor", "set", "macro", "endmacro", "call", "endcall", "raw", "endraw", "x", "messages",
            "loop.index", "ns", "namespace(a=1)", "ns.a", "=", "(", ")", "[", "]", "{", "}", ",", ":", "|", "~", "+",
            "-", "*", "/", "//", "%", "**", "==", "!=", "<", ">", "not", "and", "or", "is", "defined", "none", "1",
            "0", "-1", "2.5", "'s'", "\"t\"", "'\\n'", "tojson", "length", "upper", "join", "map", "select", "range(3)",
            "raise_exception('r')", "caller()", ".", "\n", " ", "  ", "text", "[::-1]", "[1:]", "items()", "break",
            "continue", "filter", "endfilter", "with", "endwith", "**2", "'a'*3", "$", "\\",
        ]
        let context: [String: JinjaValue] = [
            "messages": [["role": "user", "content": "hi"], ["role": "assistant", "content": ["a", 1]]],
            "x": ["k": [1, 2.5, nil, true]],
        ]
        var parsed = 0
        for _ in 0..<1500 {
            let count = Int(generator.next() % 24) + 1
            let source = (0..<count).map { _ in pieces[Int(generator.next() % UInt64(pieces.count))] }.joined(separator: " ")
            guard let template = try? ChatTemplate(source: source) else { continue }
            parsed += 1
            var options = JinjaRenderOptions()
            options.maxSteps = 100_000
            _ = try? template.render(context: context, options: options)
        }
        XCTAssertGreaterThan(parsed, 100)
    }
}

/// A small deterministic generator for the fuzz test.
struct ChatTemplateFuzzRandom {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
