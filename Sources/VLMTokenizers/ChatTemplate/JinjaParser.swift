// Recursive-descent parser from tokens to `JinjaNode`s, following jinja2 3.1.6 parser.py method by method
// (parse_statement, parse_for, parse_if, parse_set, ..., parse_condexpr down to parse_primary), plus the
// extensions transformers loads: loopcontrols (break/continue) and its `{% generation %}` tag.

struct JinjaParser {
    /// Deepest expression or statement nesting accepted; deeper input is refused rather than risking the stack.
    static let maxNesting = 100

    private let tokens: [JinjaToken]
    private var index = 0
    private var expressionDepth = 0
    /// Open block tags with their lines, innermost last, and the end tags each one waits for.
    private var openBlocks: [(tag: String, line: Int, endTags: [String])] = []
    private var loopDepth = 0

    private init(tokens: [JinjaToken]) {
        self.tokens = tokens
    }

    static func parse(_ source: String) throws -> [JinjaNode] {
        var parser = JinjaParser(tokens: try JinjaLexer.tokenize(source))
        let nodes = JinjaOptimizer().optimize(JinjaScopeAnalysis.root(try parser.subparse(endTags: nil)))
        try checkNames(nodes, soft: false)
        return nodes
    }

    // MARK: - Filter and test names

    /// Jinja's compiler refuses a filter or test it does not know, except inside an `if` statement or an inline
    /// `if` expression (a "soft" frame), where the error waits until the filter is called. Loop, macro, call,
    /// filter, with and set-block bodies start hard frames again (compiler.py `_filter_test_common`).
    private static func checkNames(_ nodes: [JinjaNode], soft: Bool) throws {
        for node in nodes {
            switch node {
            case .text, .loopBreak, .loopContinue, .declareMissing:
                break
            case .output(let expr):
                try checkNames(expr, soft: soft)
            case .ifChain(let branches, let otherwise):
                for branch in branches {
                    try checkNames(branch.condition, soft: true)
                    try checkNames(branch.body, soft: true)
                }
                try checkNames(otherwise, soft: true)
            case .forLoop(let loop):
                try checkNames(loop.iterable, soft: soft)
                if let condition = loop.condition { try checkNames(condition, soft: false) }
                try checkNames(loop.body, soft: false)
                try checkNames(loop.otherwise, soft: soft)
            case .assign(_, let expr, _):
                try checkNames(expr, soft: soft)
            case .assignBlock(_, let filter, let body, _):
                if let filter { try checkNames(filter, soft: false) }
                try checkNames(body, soft: false)
            case .macro(let definition):
                for value in definition.defaults { try checkNames(value, soft: false) }
                try checkNames(definition.body, soft: false)
            case .callBlock(let call, let caller):
                try checkNames(call, soft: soft)
                try checkNames(caller.body, soft: false)
            case .filterBlock(let filter, let body, _):
                try checkNames(filter, soft: false)
                try checkNames(body, soft: false)
            case .with(let assignments, let body):
                for assignment in assignments { try checkNames(assignment.value, soft: soft) }
                try checkNames(body, soft: false)
            case .scope(let body):
                try checkNames(body, soft: false)
            }
        }
    }

    private static func checkNames(_ expr: JinjaExpr, soft: Bool) throws {
        var soft = soft
        switch expr.kind {
        case .filter(_, let name, _):
            if !soft && !JinjaInterpreter.supportedFilters.contains(name) && !JinjaInterpreter.unsupportedFilters.contains(name) {
                throw ChatTemplateError(kind: .syntax, line: expr.line, message: "No filter named '\(name)'.")
            }
        case .test(_, let name, _):
            if !soft && !JinjaInterpreter.supportedTests.contains(name) {
                throw ChatTemplateError(kind: .syntax, line: expr.line, message: "No test named '\(name)'.")
            }
        case .conditional:
            soft = true
        default:
            break
        }
        for child in JinjaExpr.children(of: expr.kind) { try checkNames(child, soft: soft) }
    }

    // MARK: - Token stream

    private var current: JinjaToken { tokens[index] }

    private func peek(_ offset: Int = 1) -> JinjaToken { tokens[min(index + offset, tokens.count - 1)] }

    @discardableResult
    private mutating func advance() -> JinjaToken {
        let token = tokens[index]
        if index < tokens.count - 1 { index += 1 }
        return token
    }

    private func isName(_ name: String) -> Bool {
        if case .name(name) = current.kind { return true }
        return false
    }

    private func isOp(_ op: String) -> Bool {
        if case .op(op) = current.kind { return true }
        return false
    }

    private mutating func skipName(_ name: String) -> Bool {
        guard isName(name) else { return false }
        advance()
        return true
    }

    private mutating func skipOp(_ op: String) -> Bool {
        guard isOp(op) else { return false }
        advance()
        return true
    }

    private mutating func expectOp(_ op: String) throws {
        guard skipOp(op) else { throw fail("expected '\(op)', got \(describe(current))") }
    }

    private mutating func expectName(_ name: String? = nil) throws -> String {
        if case .name(let value) = current.kind, name == nil || name == value {
            advance()
            return value
        }
        throw fail(name.map { "expected '\($0)', got \(describe(current))" } ?? "expected a name, got \(describe(current))")
    }

    private mutating func expect(_ kind: JinjaToken.Kind) throws {
        guard current.kind == kind else {
            throw fail("expected \(describe(JinjaToken(kind: kind, line: 0))), got \(describe(current))")
        }
        advance()
    }

    private func describe(_ token: JinjaToken) -> String {
        switch token.kind {
        case .data: return "template data"
        case .variableBegin: return "'{{'"
        case .variableEnd: return "end of print statement '}}'"
        case .blockBegin: return "'{%'"
        case .blockEnd: return "end of statement block '%}'"
        case .name(let name): return "'\(name)'"
        case .string: return "string literal"
        case .integer(let i): return "'\(i)'"
        case .float(let d): return "'\(JinjaPython.floatRepr(d))'"
        case .op(let op): return "'\(op)'"
        case .eof: return "end of template"
        }
    }

    private func fail(_ message: String, line: Int? = nil, kind: ChatTemplateError.Kind = .syntax) -> ChatTemplateError {
        ChatTemplateError(kind: kind, line: line ?? current.line, message: message)
    }

    /// Builds an expression node, refusing trees deeper than the interpreter may safely recurse
    /// (a long `a + a + ...` chain nests as deeply as parentheses do).
    private func make(_ kind: JinjaExpr.Kind, line: Int) throws -> JinjaExpr {
        let expr = JinjaExpr(kind: kind, line: line)
        if expr.depth > JinjaParser.maxNesting * 2 {
            throw fail("expression nested more than \(JinjaParser.maxNesting * 2) levels deep", line: line, kind: .limit)
        }
        return expr
    }

    private mutating func nest() throws {
        expressionDepth += 1
        if expressionDepth > JinjaParser.maxNesting {
            throw fail("expression nested more than \(JinjaParser.maxNesting) levels deep", kind: .limit)
        }
    }

    // MARK: - Statements

    /// Template data, `{{ }}` and statements until one of `endTags` opens a block (left as the current token).
    private mutating func subparse(endTags: [String]?) throws -> [JinjaNode] {
        var body: [JinjaNode] = []
        while true {
            switch current.kind {
            case .data(let text):
                body.append(.text(text))
                advance()
            case .variableBegin:
                advance()
                body.append(.output(try parseTuple()))
                try expect(.variableEnd)
            case .blockBegin:
                advance()
                if let endTags, case .name(let tag) = current.kind, endTags.contains(tag) { return body }
                body.append(contentsOf: try parseStatement())
                try expect(.blockEnd)
            case .eof:
                return body
            default:
                throw fail("unexpected \(describe(current))")
            }
        }
    }

    /// parse_statements: an optional colon, `%}`, then a body up to one of `endTags`.
    private mutating func parseBody(_ endTags: [String], dropEndTag: Bool) throws -> [JinjaNode] {
        _ = skipOp(":")
        try expect(.blockEnd)
        let body = try subparse(endTags: endTags)
        if case .eof = current.kind, let open = openBlocks.last {
            throw fail(
                "unexpected end of template: the '\(open.tag)' block opened on line \(open.line) is not closed "
                    + "(expected \(endTags.map { "'{% \($0) %}'" }.joined(separator: " or ")))",
                line: open.line)
        }
        if dropEndTag { advance() }
        return body
    }

    private mutating func parseStatement() throws -> [JinjaNode] {
        guard case .name(let tag) = current.kind else { throw fail("tag name expected, got \(describe(current))") }
        let line = current.line
        switch tag {
        case "break", "continue":
            guard loopDepth > 0 else { throw fail("'\(tag)' outside a for loop") }
            advance()
            return [tag == "break" ? .loopBreak : .loopContinue]
        case "print":
            advance()
            var nodes: [JinjaNode] = []
            while current.kind != .blockEnd {
                if !nodes.isEmpty { try expectOp(",") }
                nodes.append(.output(try parseExpression()))
            }
            return nodes
        case "block", "extends", "include", "import", "from", "autoescape":
            throw fail("unsupported statement '\(tag)'", kind: .unsupported)
        case "for", "if", "set", "macro", "call", "filter", "with", "generation":
            break
        default:
            if let open = openBlocks.last {
                throw fail(
                    "unknown tag '\(tag)'; the innermost open block is '\(open.tag)' from line \(open.line), "
                        + "which expects \(open.endTags.map { "'\($0)'" }.joined(separator: " or "))")
            }
            if tag.hasPrefix("end") || tag == "else" || tag == "elif" {
                throw fail("unexpected '\(tag)': no block is open")
            }
            throw fail("unknown tag '\(tag)'")
        }
        guard openBlocks.count < JinjaParser.maxNesting else {
            throw fail("blocks nested more than \(JinjaParser.maxNesting) levels deep", kind: .limit)
        }
        let endTags: [String] =
            switch tag {
            case "for": ["endfor", "else"]
            case "if": ["elif", "else", "endif"]
            default: ["end" + tag]
            }
        openBlocks.append((tag, line, endTags))
        defer { openBlocks.removeLast() }
        switch tag {
        case "for": return [try parseFor()]
        case "if": return [try parseIf()]
        case "set": return [try parseSet()]
        case "macro": return [try parseMacro()]
        case "call": return [try parseCallBlock()]
        case "filter": return [try parseFilterBlock()]
        case "with": return [try parseWith()]
        default:
            advance()  // generation
            return [.scope(try parseBody(["endgeneration"], dropEndTag: true))]
        }
    }

    private mutating func parseFor() throws -> JinjaNode {
        let line = advance().line
        let target = try parseAssignTarget(extraEndNames: ["in"])
        _ = try expectName("in")
        let iterable = try parseTuple(withCondexpr: false, extraEndNames: ["recursive"])
        var condition: JinjaExpr?
        if skipName("if") { condition = try parseExpression() }
        if isName("recursive") { throw fail("unsupported recursive for loop", kind: .unsupported) }
        loopDepth += 1
        let body = try parseBody(["endfor", "else"], dropEndTag: false)
        loopDepth -= 1
        var otherwise: [JinjaNode] = []
        if advance().kind == .name("else") {
            openBlocks[openBlocks.count - 1].endTags = ["endfor"]
            otherwise = try parseBody(["endfor"], dropEndTag: true)
        }
        return .forLoop(JinjaForLoop(
            target: target, iterable: iterable, condition: condition, body: body, otherwise: otherwise, line: line))
    }

    private mutating func parseIf() throws -> JinjaNode {
        advance()
        var branches: [(condition: JinjaExpr, body: [JinjaNode])] = []
        var otherwise: [JinjaNode] = []
        while true {
            let condition = try parseTuple(withCondexpr: false)
            branches.append((condition, try parseBody(["elif", "else", "endif"], dropEndTag: false)))
            let token = advance()
            if token.kind == .name("elif") { continue }
            if token.kind == .name("else") {
                openBlocks[openBlocks.count - 1].endTags = ["endif"]
                otherwise = try parseBody(["endif"], dropEndTag: true)
            }
            break
        }
        return .ifChain(branches: branches, otherwise: otherwise)
    }

    private mutating func parseSet() throws -> JinjaNode {
        let line = advance().line
        let target = try parseAssignTarget(withNamespace: true)
        if skipOp("=") { return .assign(target, try parseTuple(), line: line) }
        let filter = try parseFilter(nil, startInline: false)
        return .assignBlock(target, filter: filter, body: try parseBody(["endset"], dropEndTag: true), line: line)
    }

    private mutating func parseSignature() throws -> (parameters: [String], defaults: [JinjaExpr]) {
        var parameters: [String] = []
        var defaults: [JinjaExpr] = []
        try expectOp("(")
        while !isOp(")") {
            if !parameters.isEmpty { try expectOp(",") }
            parameters.append(try expectName())
            if skipOp("=") {
                defaults.append(try parseExpression())
            } else if !defaults.isEmpty {
                throw fail("non-default argument follows default argument")
            }
        }
        try expectOp(")")
        return (parameters, defaults)
    }

    /// A macro or caller body: break/continue inside it cannot reach an enclosing loop.
    private mutating func parseFunctionBody(_ endTag: String) throws -> [JinjaNode] {
        let savedLoopDepth = loopDepth
        loopDepth = 0
        defer { loopDepth = savedLoopDepth }
        return try parseBody([endTag], dropEndTag: true)
    }

    private mutating func parseMacro() throws -> JinjaNode {
        let line = advance().line
        let name = try expectName()
        let (parameters, defaults) = try parseSignature()
        let body = try parseFunctionBody("endmacro")
        return .macro(JinjaMacroDefinition(name: name, parameters: parameters, defaults: defaults, body: body, line: line))
    }

    private mutating func parseCallBlock() throws -> JinjaNode {
        let line = advance().line
        let (parameters, defaults) = isOp("(") ? try parseSignature() : ([], [])
        let call = try parseExpression()
        guard case .call = call.kind else { throw fail("expected a macro call after 'call'", line: line) }
        let body = try parseFunctionBody("endcall")
        return .callBlock(
            call: call,
            caller: JinjaMacroDefinition(name: "caller", parameters: parameters, defaults: defaults, body: body, line: line))
    }

    private mutating func parseFilterBlock() throws -> JinjaNode {
        let line = advance().line
        guard let filter = try parseFilter(nil, startInline: true) else { throw fail("expected a filter name") }
        return .filterBlock(filter: filter, body: try parseBody(["endfilter"], dropEndTag: true), line: line)
    }

    private mutating func parseWith() throws -> JinjaNode {
        advance()
        var assignments: [(target: JinjaTarget, value: JinjaExpr)] = []
        while current.kind != .blockEnd {
            if !assignments.isEmpty { try expectOp(",") }
            let target = try parseAssignTarget()
            try expectOp("=")
            assignments.append((target, try parseExpression()))
        }
        return .with(assignments: assignments, body: try parseBody(["endwith"], dropEndTag: true))
    }

    // MARK: - Assignment targets

    private func isTupleEnd(_ extraEndNames: [String]) -> Bool {
        switch current.kind {
        case .variableEnd, .blockEnd, .op(")"): return true
        case .name(let name): return extraEndNames.contains(name)
        default: return false
        }
    }

    /// parse_assign_target: a name, `ns.attr` (in `set`), or a tuple of them.
    private mutating func parseAssignTarget(extraEndNames: [String] = [], withNamespace: Bool = false) throws -> JinjaTarget {
        var targets: [JinjaTarget] = []
        var isTuple = false
        while true {
            if !targets.isEmpty { try expectOp(",") }
            if isTupleEnd(extraEndNames) { break }
            targets.append(try parseTargetPrimary(withNamespace: withNamespace))
            if isOp(",") { isTuple = true } else { break }
        }
        if !isTuple, let single = targets.first { return single }
        guard !targets.isEmpty else { throw fail("expected an assignment target, got \(describe(current))") }
        return .tuple(targets)
    }

    private mutating func parseTargetPrimary(withNamespace: Bool) throws -> JinjaTarget {
        let token = current
        switch token.kind {
        case .name(let name):
            if ["true", "false", "True", "False", "none", "None"].contains(name) {
                throw fail("can't assign to a constant '\(name)'")
            }
            advance()
            if withNamespace && isOp(".") {
                advance()
                return .namespaceAttribute(name, try expectName())
            }
            return .name(name)
        case .op("("):
            advance()
            let inner = try parseAssignTarget()
            try expectOp(")")
            return inner
        default:
            throw fail("can't assign to \(describe(token))")
        }
    }

    // MARK: - Expressions

    /// parse_tuple: an expression, or a tuple when commas separate several.
    private mutating func parseTuple(
        withCondexpr: Bool = true, extraEndNames: [String] = [], explicitParentheses: Bool = false
    ) throws -> JinjaExpr {
        let line = current.line
        var items: [JinjaExpr] = []
        var isTuple = false
        while true {
            if !items.isEmpty { try expectOp(",") }
            if isTupleEnd(extraEndNames) { break }
            items.append(withCondexpr ? try parseExpression() : try parseOr())
            if isOp(",") { isTuple = true } else { break }
        }
        if !isTuple {
            if let single = items.first { return single }
            if !explicitParentheses { throw fail("expected an expression, got \(describe(current))") }
        }
        return try make(.tuple(items), line: line)
    }

    private mutating func parseExpression(withCondexpr: Bool = true) throws -> JinjaExpr {
        try nest()
        defer { expressionDepth -= 1 }
        return withCondexpr ? try parseCondexpr() : try parseOr()
    }

    private mutating func parseCondexpr() throws -> JinjaExpr {
        var line = current.line
        var expr = try parseOr()
        while skipName("if") {
            let test = try parseOr()
            let otherwise = skipName("else") ? try parseExpression() : nil
            expr = try make(.conditional(test: test, then: expr, otherwise: otherwise), line: line)
            line = current.line
        }
        return expr
    }

    private mutating func parseOr() throws -> JinjaExpr {
        let line = current.line
        var left = try parseAnd()
        while skipName("or") { left = try make(.or(left, try parseAnd()), line: line) }
        return left
    }

    private mutating func parseAnd() throws -> JinjaExpr {
        let line = current.line
        var left = try parseNot()
        while skipName("and") { left = try make(.and(left, try parseNot()), line: line) }
        return left
    }

    private mutating func parseNot() throws -> JinjaExpr {
        if isName("not") {
            let line = advance().line
            try nest()
            defer { expressionDepth -= 1 }
            return try make(.not(try parseNot()), line: line)
        }
        return try parseCompare()
    }

    private static let compareOperators: [String: JinjaCompareOperator] = [
        "==": .eq, "!=": .ne, "<": .lt, "<=": .le, ">": .gt, ">=": .ge,
    ]

    private mutating func parseCompare() throws -> JinjaExpr {
        let line = current.line
        let expr = try parseMath1()
        var operations: [(op: JinjaCompareOperator, operand: JinjaExpr)] = []
        while true {
            if case .op(let op) = current.kind, let compare = JinjaParser.compareOperators[op] {
                advance()
                operations.append((compare, try parseMath1()))
            } else if skipName("in") {
                operations.append((.in, try parseMath1()))
            } else if isName("not"), peek().kind == .name("in") {
                advance()
                advance()
                operations.append((.notIn, try parseMath1()))
            } else {
                break
            }
        }
        return operations.isEmpty ? expr : try make(.compare(expr, operations), line: line)
    }

    private mutating func parseMath1() throws -> JinjaExpr {
        let line = current.line
        var left = try parseConcat()
        while true {
            let op: JinjaBinaryOperator
            if isOp("+") { op = .add } else if isOp("-") { op = .subtract } else { break }
            advance()
            left = try make(.binary(op, left, try parseConcat()), line: line)
        }
        return left
    }

    private mutating func parseConcat() throws -> JinjaExpr {
        let line = current.line
        var parts = [try parseMath2()]
        while skipOp("~") { parts.append(try parseMath2()) }
        return parts.count == 1 ? parts[0] : try make(.concat(parts), line: line)
    }

    private mutating func parseMath2() throws -> JinjaExpr {
        let line = current.line
        var left = try parsePow()
        while true {
            let op: JinjaBinaryOperator
            if isOp("*") {
                op = .multiply
            } else if isOp("/") {
                op = .divide
            } else if isOp("//") {
                op = .floorDivide
            } else if isOp("%") {
                op = .modulo
            } else {
                break
            }
            advance()
            left = try make(.binary(op, left, try parsePow()), line: line)
        }
        return left
    }

    private mutating func parsePow() throws -> JinjaExpr {
        let line = current.line
        var left = try parseUnary()
        while skipOp("**") { left = try make(.binary(.power, left, try parseUnary()), line: line) }
        return left
    }

    private mutating func parseUnary(withFilter: Bool = true) throws -> JinjaExpr {
        let line = current.line
        var node: JinjaExpr
        if isOp("-") || isOp("+") {
            let negative = isOp("-")
            advance()
            try nest()
            let operand = try parseUnary(withFilter: false)
            expressionDepth -= 1
            node = try make(negative ? .negative(operand) : .positive(operand), line: line)
        } else {
            node = try parsePrimary()
        }
        node = try parsePostfix(node)
        if withFilter { node = try parseFilterExpression(node) }
        return node
    }

    private mutating func parsePrimary() throws -> JinjaExpr {
        let token = current
        switch token.kind {
        case .name(let name):
            advance()
            switch name {
            case "true", "True": return try make(.literal(.bool(true)), line: token.line)
            case "false", "False": return try make(.literal(.bool(false)), line: token.line)
            case "none", "None": return try make(.literal(.none), line: token.line)
            default: return try make(.name(name), line: token.line)
            }
        case .string(var text):
            advance()
            while case .string(let more) = current.kind {
                text += more
                advance()
            }
            return try make(.literal(.string(text)), line: token.line)
        case .integer(let value):
            advance()
            return try make(.literal(.int(value)), line: token.line)
        case .float(let value):
            advance()
            return try make(.literal(.double(value)), line: token.line)
        case .op("("):
            advance()
            let inner = try parseTuple(explicitParentheses: true)
            try expectOp(")")
            return inner
        case .op("["):
            advance()
            var items: [JinjaExpr] = []
            while !isOp("]") {
                if !items.isEmpty { try expectOp(",") }
                if isOp("]") { break }
                items.append(try parseExpression())
            }
            try expectOp("]")
            return try make(.list(items), line: token.line)
        case .op("{"):
            advance()
            var pairs: [(key: JinjaExpr, value: JinjaExpr)] = []
            while !isOp("}") {
                if !pairs.isEmpty { try expectOp(",") }
                if isOp("}") { break }
                let key = try parseExpression()
                try expectOp(":")
                pairs.append((key, try parseExpression()))
            }
            try expectOp("}")
            return try make(.dict(pairs), line: token.line)
        default:
            throw fail("unexpected \(describe(token))")
        }
    }

    private mutating func parsePostfix(_ start: JinjaExpr) throws -> JinjaExpr {
        var node = start
        while true {
            if isOp(".") || isOp("[") {
                node = try parseSubscript(node)
            } else if isOp("(") {
                node = try parseCall(node)
            } else {
                return node
            }
        }
    }

    private mutating func parseFilterExpression(_ start: JinjaExpr) throws -> JinjaExpr {
        var node = start
        while true {
            if isOp("|") {
                node = try parseFilter(node, startInline: false) ?? node
            } else if isName("is") {
                node = try parseTest(node)
            } else if isOp("(") {
                node = try parseCall(node)
            } else {
                return node
            }
        }
    }

    private mutating func parseSubscript(_ node: JinjaExpr) throws -> JinjaExpr {
        let token = advance()
        if token.kind == .op(".") {
            let attribute = advance()
            switch attribute.kind {
            case .name(let name): return try make(.attribute(node, name), line: token.line)
            case .integer(let i):
                return try make(.item(node, try make(.literal(.int(i)), line: attribute.line)), line: token.line)
            default: throw fail("expected name or number after '.'", line: attribute.line)
            }
        }
        var arguments: [JinjaExpr] = []
        while !isOp("]") {
            if !arguments.isEmpty { try expectOp(",") }
            arguments.append(try parseSubscribed())
        }
        try expectOp("]")
        let index = arguments.count == 1 ? arguments[0] : try make(.tuple(arguments), line: token.line)
        return try make(.item(node, index), line: token.line)
    }

    private mutating func parseSubscribed() throws -> JinjaExpr {
        let line = current.line
        var start: JinjaExpr?
        if isOp(":") {
            advance()
        } else {
            let expr = try parseExpression()
            guard isOp(":") else { return expr }
            advance()
            start = expr
        }
        var stop: JinjaExpr?
        if !isOp(":") && !isOp("]") && !isOp(",") { stop = try parseExpression() }
        var step: JinjaExpr?
        if skipOp(":"), !isOp("]") && !isOp(",") { step = try parseExpression() }
        return try make(.slice(start, stop, step), line: line)
    }

    private mutating func parseCallArguments() throws -> JinjaArguments {
        let line = current.line
        try expectOp("(")
        var arguments = JinjaArguments()
        var requireComma = false
        func ensure(_ condition: Bool) throws {
            if !condition { throw fail("invalid syntax for function call expression", line: line) }
        }
        while !isOp(")") {
            if requireComma {
                try expectOp(",")
                if isOp(")") { break }
            }
            if skipOp("*") {
                try ensure(arguments.star == nil && arguments.starStar == nil)
                arguments.star = try parseExpression()
            } else if skipOp("**") {
                try ensure(arguments.starStar == nil)
                arguments.starStar = try parseExpression()
            } else if case .name(let name) = current.kind, peek().kind == .op("=") {
                try ensure(arguments.starStar == nil)
                advance()
                advance()
                arguments.keyword.append((name, try parseExpression()))
            } else {
                try ensure(arguments.star == nil && arguments.starStar == nil && arguments.keyword.isEmpty)
                arguments.positional.append(try parseExpression())
            }
            requireComma = true
        }
        try expectOp(")")
        return arguments
    }

    private mutating func parseCall(_ node: JinjaExpr) throws -> JinjaExpr {
        let line = current.line
        return try make(.call(node, try parseCallArguments()), line: line)
    }

    private mutating func parseDottedName() throws -> String {
        var name = try expectName()
        while skipOp(".") { name += "." + (try expectName()) }
        return name
    }

    /// parse_filter: `| name(args)` repeated; with `startInline` the first filter has no pipe.
    private mutating func parseFilter(_ start: JinjaExpr?, startInline: Bool) throws -> JinjaExpr? {
        var node = start
        var inline = startInline
        while isOp("|") || inline {
            if !inline { advance() }
            let line = current.line
            let name = try parseDottedName()
            let arguments = isOp("(") ? try parseCallArguments() : JinjaArguments()
            node = try make(.filter(node, name, arguments), line: line)
            inline = false
        }
        return node
    }

    private mutating func parseTest(_ node: JinjaExpr) throws -> JinjaExpr {
        let line = advance().line  // "is"
        let negated = skipName("not")
        let name = try parseDottedName()
        var arguments = JinjaArguments()
        if isOp("(") {
            arguments = try parseCallArguments()
        } else {
            var takesArgument = false
            switch current.kind {
            case .name(let next): takesArgument = !["else", "or", "and"].contains(next)
            case .string, .integer, .float, .op("["), .op("{"): takesArgument = true
            default: break
            }
            if takesArgument {
                if isName("is") { throw fail("tests cannot be chained with 'is'") }
                arguments.positional = [try parsePostfix(try parsePrimary())]
            }
        }
        let test = try make(.test(node, name, arguments), line: line)
        return negated ? try make(.not(test), line: line) : test
    }
}
