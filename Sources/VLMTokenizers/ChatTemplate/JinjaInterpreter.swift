import Foundation

// Walks the syntax tree and renders it, with the semantics of transformers' ImmutableSandboxedEnvironment
// (jinja2 3.1.6 compiler.py/runtime.py/sandbox.py): Jinja scoping, default Undefined, Python operators, and
// limits so that no template can run away.

/// Limits and clock for one render.
struct JinjaRenderOptions: Sendable {
    /// Evaluation steps (expression nodes, loop iterations, items walked by filters) before giving up.
    var maxSteps = 10_000_000
    /// Largest output, or string built while rendering, in UTF-8 bytes.
    var maxOutputBytes = 64 << 20
    /// Deepest macro call nesting (Python's recursion limit stops Jinja a little deeper).
    var maxCallDepth = 64
    /// Deepest evaluation recursion (statements inside statements, expressions inside expressions, across
    /// macro calls), like Python's recursion limit; with `JinjaDeepStack` it keeps the stack bounded.
    var maxRecursion = 1_000
    /// Deepest nesting of lists, dictionaries and namespaces a template may build (printing and comparing
    /// them recurses).
    var maxValueNesting = 256
    /// Largest `range()`, as the sandbox's MAX_RANGE.
    var maxRange = 100_000
    /// What `strftime_now` formats.
    var now: @Sendable () -> Date = { Date() }
    /// The time zone `strftime_now` uses; nil is the process's local time, as Python's `datetime.now()`.
    var timeZone: TimeZone?
}

/// Variables visible at one level: the template's own `{% set %}`s, a loop iteration, a macro call, a `with`.
final class JinjaScope {
    private var variables: [String: JinjaValue] = [:]
    let parent: JinjaScope?

    init(parent: JinjaScope?) {
        self.parent = parent
    }

    func lookup(_ name: String) -> JinjaValue? {
        var scope: JinjaScope? = self
        while let current = scope {
            if let value = current.variables[name] { return value }
            scope = current.parent
        }
        return nil
    }

    func set(_ name: String, _ value: JinjaValue) {
        variables[name] = value
    }
}

/// A macro bound to the scope it was defined in (it sees that scope's later changes, as in Jinja).
final class JinjaMacro {
    let definition: JinjaMacroDefinition
    /// The defining scope; cleared when the render ends, as the scope usually holds the macro too (a cycle).
    var closure: JinjaScope?

    init(_ definition: JinjaMacroDefinition, closure: JinjaScope) {
        self.definition = definition
        self.closure = closure
    }

    var name: String { definition.name }
}

final class JinjaInterpreter {
    let options: JinjaRenderOptions
    private var steps = 0
    private var callDepth = 0
    private var recursion = 0
    /// The line of the expression evaluated last, for errors raised outside any expression.
    private var lastLine = 1
    /// Namespaces and macros made during the render: emptied at its end to break reference cycles
    /// (`{% set ns.me = ns %}`, a scope holding a macro that holds the scope).
    private var madeObjects: [JinjaObject] = []
    private func make(_ object: JinjaObject) -> JinjaValue {
        madeObjects.append(object)
        return .object(object)
    }

    static let globalFunctions = ["range", "dict", "namespace", "raise_exception", "strftime_now", "lipsum", "cycler", "joiner"]

    init(options: JinjaRenderOptions) {
        self.options = options
    }

    func render(_ nodes: [JinjaNode], context: [String: JinjaValue]) throws -> String {
        let globals = JinjaScope(parent: nil)
        for name in JinjaInterpreter.globalFunctions { globals.set(name, .object(JinjaObject(.function(name)))) }
        let contextScope = JinjaScope(parent: globals)
        for (name, value) in context { contextScope.set(name, value) }
        var out = ""
        defer {
            for object in madeObjects {
                object.attributes = JinjaDictionary()
                if case .macro(let macro) = object.kind { macro.closure = nil }
            }
        }
        do {
            _ = try execute(nodes, JinjaScope(parent: contextScope), &out)
        } catch let failure as JinjaFailure {
            throw ChatTemplateError(kind: failure.kind, line: lastLine, message: failure.message)
        }
        return out
    }

    // MARK: - Budget

    func charge(_ amount: Int = 1) throws {
        steps += amount
        if steps > options.maxSteps {
            throw JinjaFailure(.limit, "the template ran more than \(options.maxSteps) steps (a runaway loop?)")
        }
    }

    /// Python's `str(value)`, within the output size limit.
    func text(_ value: JinjaValue) throws -> String {
        try JinjaPython.str(value, limit: options.maxOutputBytes)
    }

    /// A short repr for error messages.
    static func shortRepr(_ value: JinjaValue) -> String {
        (try? JinjaPython.repr(value, limit: 200)) ?? "<\(JinjaPython.typeName(value))>"
    }

    func checkSize(_ text: String) throws {
        if text.utf8.count > options.maxOutputBytes {
            throw JinjaFailure(.limit, "the template built a string over \(options.maxOutputBytes) bytes")
        }
    }

    private func write(_ text: String, _ out: inout String) throws {
        out += text
        try checkSize(out)
    }

    /// Runs `body`, giving a failure without a line the line of the statement that raised it.
    private func located<T>(_ line: Int, _ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let failure as JinjaFailure {
            throw ChatTemplateError(kind: failure.kind, line: line, message: failure.message)
        }
    }

    // MARK: - Statements

    enum Flow { case normal, breakLoop, continueLoop }

    private func enter() throws {
        recursion += 1
        if recursion > options.maxRecursion {
            throw JinjaFailure(.limit, "the template recursed more than \(options.maxRecursion) levels deep")
        }
    }

    /// Refuses a value nested deeper than `maxValueNesting` (counting namespaces), walking at most that deep.
    func checkNesting(_ value: JinjaValue) throws {
        func walk(_ value: JinjaValue, _ depth: Int) throws {
            switch value {
            case .array(let items):
                if depth >= options.maxValueNesting { throw tooDeep() }
                try charge(items.count)
                for item in items { try walk(item, depth + 1) }
            case .dictionary(let dictionary):
                if depth >= options.maxValueNesting { throw tooDeep() }
                try charge(dictionary.count)
                for item in dictionary.values { try walk(item, depth + 1) }
            case .object(let object):
                if case .namespace = object.kind {
                    if depth >= options.maxValueNesting { throw tooDeep() }
                    for item in object.attributes.values { try walk(item, depth + 1) }
                }
            default:
                break
            }
        }
        func tooDeep() -> JinjaFailure {
            JinjaFailure(.limit, "the template built a value nested more than \(options.maxValueNesting) levels deep")
        }
        try walk(value, 0)
    }

    func execute(_ nodes: [JinjaNode], _ scope: JinjaScope, _ out: inout String) throws -> Flow {
        try located(lastLine) { try enter() }
        defer { recursion -= 1 }
        for node in nodes {
            switch node {
            case .text(let text):
                try write(text, &out)
            case .output(let expr):
                let value = try evaluate(expr, scope)
                try located(expr.line) { try write(try text(value), &out) }
            case .ifChain(let branches, let otherwise):
                var body = otherwise
                for branch in branches {
                    if JinjaPython.truthy(try evaluate(branch.condition, scope)) {
                        body = branch.body
                        break
                    }
                }
                let flow = try execute(body, scope, &out)
                if flow != .normal { return flow }
            case .forLoop(let loop):
                let flow = try runFor(loop, scope, &out)
                if flow != .normal { return flow }
            case .assign(let target, let expr, let line):
                let value = try evaluate(expr, scope)
                try located(line) { try assign(target, value, scope) }
            case .assignBlock(let target, let filter, let body, let line):
                var buffer = ""
                _ = try execute(body, JinjaScope(parent: scope), &buffer)
                var value = JinjaValue.string(buffer)
                if let filter { value = try applyFilterChain(filter, to: value, scope) }
                try located(line) { try assign(target, value, scope) }
            case .macro(let definition):
                scope.set(definition.name, make(JinjaObject(.macro(JinjaMacro(definition, closure: scope)))))
            case .callBlock(let call, let callerDefinition):
                guard case .call(let callee, let arguments) = call.kind else { break }
                let caller = make(JinjaObject(.macro(JinjaMacro(callerDefinition, closure: scope))))
                let result = try located(call.line) {
                    try evaluateCall(callee, arguments, scope, extraKeyword: [("caller", caller)])
                }
                try located(call.line) { try write(try text(result), &out) }
            case .filterBlock(let filter, let body, let line):
                var buffer = ""
                _ = try execute(body, JinjaScope(parent: scope), &buffer)
                let value = try applyFilterChain(filter, to: .string(buffer), scope)
                try located(line) { try write(try text(value), &out) }
            case .with(let assignments, let body):
                let inner = JinjaScope(parent: scope)
                for assignment in assignments {
                    let value = try evaluate(assignment.value, scope)
                    try located(assignment.value.line) { try assign(assignment.target, value, inner) }
                }
                let flow = try execute(body, inner, &out)
                if flow != .normal { return flow }
            case .loopBreak:
                return .breakLoop
            case .loopContinue:
                return .continueLoop
            case .scope(let body):
                let flow = try execute(body, JinjaScope(parent: scope), &out)
                if flow != .normal { return flow }
            case .declareMissing(let names):
                for name in names { scope.set(name, .undefined("'\(name)' is undefined")) }
            }
        }
        return .normal
    }

    /// A for loop: each iteration gets its own scope (so `{% set %}` inside does not leak out), with `loop`.
    private func runFor(_ loop: JinjaForLoop, _ scope: JinjaScope, _ out: inout String) throws -> Flow {
        let iterable = try evaluate(loop.iterable, scope)
        var items = try located(loop.line) { try iterate(iterable) }
        if let condition = loop.condition {
            items = try items.filter { item in
                let filterScope = JinjaScope(parent: scope)
                try located(loop.line) { try assign(loop.target, item, filterScope) }
                return JinjaPython.truthy(try evaluate(condition, filterScope))
            }
        }
        if items.isEmpty { return try execute(loop.otherwise, JinjaScope(parent: scope), &out) }
        for (index, item) in items.enumerated() {
            try located(loop.line) { try charge() }
            let iterationScope = JinjaScope(parent: scope)
            try located(loop.line) { try assign(loop.target, item, iterationScope) }
            // `loop` reads its fields from the items and this position when asked (see loopField).
            let loopObject = JinjaObject(.loop, items: items)
            loopObject.position = index
            iterationScope.set("loop", .object(loopObject))
            if try execute(loop.body, iterationScope, &out) == .breakLoop { break }
        }
        return .normal
    }

    /// A field of Jinja's LoopContext, for the iteration at `loop.position` over `loop.items`.
    static func loopField(_ loop: JinjaObject, _ name: String) -> JinjaValue? {
        let index = loop.position, count = loop.items.count
        switch name {
        case "index": return .int(index + 1)
        case "index0": return .int(index)
        case "revindex": return .int(count - index)
        case "revindex0": return .int(count - index - 1)
        case "first": return .bool(index == 0)
        case "last": return .bool(index == count - 1)
        case "length": return .int(count)
        case "depth": return .int(1)
        case "depth0": return .int(0)
        case "previtem":
            guard index > 0 else { return nil }  // Undefined on the first iteration
            return loop.items[index - 1]
        case "nextitem":
            guard index < count - 1 else { return nil }
            return loop.items[index + 1]
        default: return nil
        }
    }

    private func assign(_ target: JinjaTarget, _ value: JinjaValue, _ scope: JinjaScope) throws {
        switch target {
        case .name(let name):
            scope.set(name, value)
        case .tuple(let targets):
            let items = try iterate(value)
            guard items.count == targets.count else {
                throw JinjaFailure.type(
                    items.count < targets.count
                        ? "not enough values to unpack (expected \(targets.count), got \(items.count))"
                        : "too many values to unpack (expected \(targets.count))")
            }
            for (target, item) in zip(targets, items) { try assign(target, item, scope) }
        case .namespaceAttribute(let name, let attribute):
            guard case .object(let object)? = scope.lookup(name), case .namespace = object.kind else {
                throw JinjaFailure(.runtime, "cannot assign attribute on non-namespace object")
            }
            try JinjaInterpreter.checkNamespaceName(attribute)
            try checkNesting(value)
            object.attributes[attribute] = value
        }
    }

    /// transformers' TemplateNamespace refuses underscore-prefixed attributes.
    static func checkNamespaceName(_ name: String) throws {
        if name.hasPrefix("_") {
            throw JinjaFailure(
                .runtime,
                "Chat templates cannot store underscore-prefixed attributes on a namespace, but got '\(name)'. "
                    + "Please rename the attribute.")
        }
    }

    // MARK: - Expressions

    func evaluate(_ expr: JinjaExpr, _ scope: JinjaScope) throws -> JinjaValue {
        lastLine = expr.line
        recursion += 1
        defer { recursion -= 1 }
        do {
            if recursion > options.maxRecursion {
                throw JinjaFailure(.limit, "the template recursed more than \(options.maxRecursion) levels deep")
            }
            try charge()
            return try evaluateKind(expr, scope)
        } catch let failure as JinjaFailure {
            throw ChatTemplateError(kind: failure.kind, line: expr.line, message: failure.message)
        }
    }

    private func evaluateKind(_ expr: JinjaExpr, _ scope: JinjaScope) throws -> JinjaValue {
        switch expr.kind {
        case .literal(let value):
            return value
        case .name(let name):
            return scope.lookup(name) ?? .undefined("'\(name)' is undefined")
        case .list(let items), .tuple(let items):
            let value = JinjaValue.array(try items.map { try evaluate($0, scope) })
            try checkNesting(value)
            return value
        case .dict(let pairs):
            var dictionary = JinjaDictionary()
            for pair in pairs {
                let key = try evaluate(pair.key, scope)
                guard case .string(let name) = key else {
                    throw JinjaFailure(
                        .unsupported, "unsupported dictionary key of type '\(JinjaPython.typeName(key))' (only string keys)")
                }
                dictionary[name] = try evaluate(pair.value, scope)
            }
            try checkNesting(.dictionary(dictionary))
            return .dictionary(dictionary)
        case .attribute(let base, let name):
            return try getAttribute(try evaluate(base, scope), name)
        case .item(let base, let index):
            let container = try evaluate(base, scope)
            if case .slice(let start, let stop, let step) = index.kind {
                return try getSlice(
                    container, try start.map { try evaluate($0, scope) }, try stop.map { try evaluate($0, scope) },
                    try step.map { try evaluate($0, scope) })
            }
            return try getItem(container, try evaluate(index, scope))
        case .slice:
            throw JinjaFailure(.syntax, "a slice is only allowed inside brackets")
        case .call(let callee, let arguments):
            return try evaluateCall(callee, arguments, scope, extraKeyword: [])
        case .filter(let base, let name, let arguments):
            guard let base else { throw JinjaFailure(.syntax, "filter '\(name)' has nothing to filter") }
            return try applyFilter(name, try evaluate(base, scope), arguments, scope)
        case .test(let base, let name, let arguments):
            return .bool(try applyTest(name, try evaluate(base, scope), arguments, scope))
        case .negative(let operand):
            return try negate(try evaluate(operand, scope))
        case .positive(let operand):
            let value = try evaluate(operand, scope)
            if case .undefined(let message) = value { throw JinjaFailure(.runtime, message) }
            guard let number = JinjaPython.number(value) else {
                throw JinjaFailure.type("bad operand type for unary +: '\(JinjaPython.typeName(value))'")
            }
            switch number {
            case .int(let i): return .int(i)
            case .double(let d): return .double(d)
            }
        case .not(let operand):
            return .bool(!JinjaPython.truthy(try evaluate(operand, scope)))
        case .binary(let op, let left, let right):
            let lhs = try evaluate(left, scope)
            // `'%s-%s' % (a, b)`: a tuple literal on the right is the argument list (values are lists here).
            if op == .modulo, case .string(let format) = lhs, case .tuple(let items) = right.kind {
                let arguments = try items.map { try evaluate($0, scope) }
                return .string(try JinjaFormat.percent(format, arguments: arguments, interpreter: self))
            }
            return try binary(op, lhs, try evaluate(right, scope))
        case .and(let left, let right):
            let value = try evaluate(left, scope)
            return JinjaPython.truthy(value) ? try evaluate(right, scope) : value
        case .or(let left, let right):
            let value = try evaluate(left, scope)
            return JinjaPython.truthy(value) ? value : try evaluate(right, scope)
        case .concat(let parts):
            var joined = ""
            for part in parts {
                joined += try text(try evaluate(part, scope))
                try checkSize(joined)
            }
            return .string(joined)
        case .compare(let first, let operations):
            var left = try evaluate(first, scope)
            for operation in operations {
                let right = try evaluate(operation.operand, scope)
                if !(try compare(left, operation.op, right)) { return .bool(false) }
                left = right
            }
            return .bool(true)
        case .conditional(let test, let then, let otherwise):
            if JinjaPython.truthy(try evaluate(test, scope)) { return try evaluate(then, scope) }
            if let otherwise { return try evaluate(otherwise, scope) }
            return .undefined(
                "the inline if-expression on line \(expr.line) evaluated to false and no else section was defined.")
        }
    }

    /// Applies a filter chain whose innermost filter has no operand (`{% filter a|b %}`, `{% set x | f %}`).
    private func applyFilterChain(_ chain: JinjaExpr, to input: JinjaValue, _ scope: JinjaScope) throws -> JinjaValue {
        guard case .filter(let base, let name, let arguments) = chain.kind else { return try evaluate(chain, scope) }
        let value = try base.map { try applyFilterChain($0, to: input, scope) } ?? input
        return try located(chain.line) { try applyFilter(name, value, arguments, scope) }
    }

    // MARK: - Attributes and items

    /// `value.name`: Jinja's sandboxed getattr tries the Python attribute (so `d.items` is the method, even if the
    /// dict has an "items" key), then the item, else Undefined. An attribute of Undefined is an error.
    /// With `itemFallback` false only Python attributes count (the `attr` filter).
    func getAttribute(_ value: JinjaValue, _ name: String, itemFallback: Bool = true) throws -> JinjaValue {
        switch value {
        case .undefined(let message):
            throw JinjaFailure(.runtime, message)
        case .dictionary(let dictionary):
            if JinjaMethods.dictionaryMethods.contains(name) { return method(value, name) }
            if itemFallback, let item = dictionary[name] { return item }
        case .string:
            if JinjaMethods.stringMethods.contains(name) { return method(value, name) }
        case .array:
            if JinjaMethods.listMethods.contains(name) { return method(value, name) }
        case .int, .bool, .double:
            // The number attributes a template might test for.
            if name == "real" { return value }
            if name == "imag" { return JinjaPython.number(value).map { if case .double = $0 { return .double(0) }; return .int(0) } ?? .int(0) }
        case .object(let object):
            switch object.kind {
            case .loop where name == "cycle" || name == "changed":
                return method(value, name)
            case .loop:
                if let field = JinjaInterpreter.loopField(object, name) { return field }
            case .namespace:
                if let member = object.attributes[name] { return member }
            default:
                break
            }
        default:
            break
        }
        return .undefined("'\(JinjaInterpreter.objectTypeRepr(value))' has no attribute '\(name)'")
    }

    /// `value[key]`: the item, else the attribute named by a string key, else Undefined.
    func getItem(_ value: JinjaValue, _ key: JinjaValue) throws -> JinjaValue {
        if case .undefined(let message) = value { throw JinjaFailure(.runtime, message) }
        switch (value, key) {
        case (.dictionary(let dictionary), .string(let name)):
            if let item = dictionary[name] { return item }
        case (.array(let items), _):
            if let index = JinjaInterpreter.integerIndex(key) {
                let position = index < 0 ? index + items.count : index
                if items.indices.contains(position) { return items[position] }
            }
        case (.string(let text), _):
            if let index = JinjaInterpreter.integerIndex(key) {
                let scalars = Array(text.unicodeScalars)
                let position = index < 0 ? index + scalars.count : index
                if scalars.indices.contains(position) { return .string(String(scalars[position])) }
            }
        default:
            break
        }
        if case .string(let name) = key {
            let attribute = try getAttribute(value, name)
            if case .undefined = attribute {} else { return attribute }
            return .undefined("'\(JinjaInterpreter.objectTypeRepr(value))' has no attribute '\(name)'")
        }
        return .undefined("\(JinjaInterpreter.objectTypeRepr(value)) has no element \(JinjaInterpreter.shortRepr(key))")
    }

    /// `value[start:stop:step]` on strings and lists. Jinja compiles slices to Python slicing directly (not
    /// through its forgiving getitem), so slicing anything else is a TypeError.
    func getSlice(_ value: JinjaValue, _ start: JinjaValue?, _ stop: JinjaValue?, _ step: JinjaValue?) throws -> JinjaValue {
        if case .undefined(let message) = value { throw JinjaFailure(.runtime, message) }
        var bounds: [Int?] = []
        for bound in [start, stop, step] {
            switch bound {
            case nil, .none?: bounds.append(nil)
            case let value?:
                if case .undefined(let message) = value { throw JinjaFailure(.runtime, message) }
                guard let index = JinjaInterpreter.integerIndex(value) else {
                    throw JinjaFailure.type("slice indices must be integers or None or have an __index__ method")
                }
                bounds.append(index)
            }
        }
        switch value {
        case .array(let items):
            let indices = try JinjaPython.sliceIndices(count: items.count, start: bounds[0], stop: bounds[1], step: bounds[2])
            return .array(indices.map { items[$0] })
        case .string(let text):
            let scalars = Array(text.unicodeScalars)
            let indices = try JinjaPython.sliceIndices(count: scalars.count, start: bounds[0], stop: bounds[1], step: bounds[2])
            return .string(JinjaPython.string(indices.map { scalars[$0] }))
        case .dictionary:
            throw JinjaFailure.type("unhashable type: 'slice'")
        default:
            throw JinjaFailure.type("'\(JinjaPython.typeName(value))' object is not subscriptable")
        }
    }

    static func integerIndex(_ value: JinjaValue) -> Int? {
        switch value {
        case .int(let i): return i
        case .bool(let b): return b ? 1 : 0
        default: return nil
        }
    }

    /// How Jinja names an object in "has no attribute" messages: `'dict object'`, `'None'`.
    static func objectTypeRepr(_ value: JinjaValue) -> String {
        if case .none = value { return "None" }
        return JinjaPython.typeName(value) + " object"
    }

    private func method(_ receiver: JinjaValue, _ name: String) -> JinjaValue {
        .object(JinjaObject(.method(receiver: receiver, name: name)))
    }

    /// Python's `iter(value)` drained into a list.
    func iterate(_ value: JinjaValue) throws -> [JinjaValue] {
        let items: [JinjaValue]
        switch value {
        case .array(let array): items = array
        case .string(let string):
            try charge(string.unicodeScalars.count)  // before building one value per character
            return string.unicodeScalars.map { .string(String($0)) }
        case .dictionary(let dictionary): items = dictionary.keys.map { .string($0) }
        case .undefined: items = []
        case .object(let object):
            guard case .iterator = object.kind else {
                throw JinjaFailure.type("'\(JinjaPython.typeName(value))' object is not iterable")
            }
            items = object.drain()
        default:
            throw JinjaFailure.type("'\(JinjaPython.typeName(value))' object is not iterable")
        }
        try charge(items.count)
        return items
    }

    // MARK: - Operators

    func negate(_ value: JinjaValue) throws -> JinjaValue {
        if case .undefined(let message) = value { throw JinjaFailure(.runtime, message) }
        switch JinjaPython.number(value) {
        case .int(let i)?:
            let (result, overflow) = 0.subtractingReportingOverflow(i)
            if overflow { throw JinjaInterpreter.overflow() }
            return .int(result)
        case .double(let d)?: return .double(-d)
        case nil: throw JinjaFailure.type("bad operand type for unary -: '\(JinjaPython.typeName(value))'")
        }
    }

    static func overflow() -> JinjaFailure {
        JinjaFailure(.unsupported, "integer result does not fit in 64 bits")
    }

    func binary(_ op: JinjaBinaryOperator, _ lhs: JinjaValue, _ rhs: JinjaValue) throws -> JinjaValue {
        if op == .modulo, case .string(let format) = lhs, case .undefined = rhs {
            // str % Undefined: Undefined supports item access, so Python treats it as a mapping argument.
            return .string(try JinjaFormat.percent(format, arguments: [rhs], mapping: nil, mappingLike: true, interpreter: self))
        }
        if case .undefined(let message) = lhs { throw JinjaFailure(.runtime, message) }
        if case .undefined(let message) = rhs { throw JinjaFailure(.runtime, message) }
        if let a = JinjaPython.number(lhs), let b = JinjaPython.number(rhs) { return try arithmetic(op, a, b) }
        let unsupported = JinjaFailure.type(
            "unsupported operand type(s) for \(op.rawValue): '\(JinjaPython.typeName(lhs))' and '\(JinjaPython.typeName(rhs))'")
        switch op {
        case .add:
            switch (lhs, rhs) {
            case let (.string(a), .string(b)):
                let text = a + b
                try checkSize(text)
                return .string(text)
            case let (.array(a), .array(b)):
                try charge(a.count + b.count)
                return .array(a + b)
            case (.string, _):
                throw JinjaFailure.type("can only concatenate str (not \"\(JinjaPython.typeName(rhs))\") to str")
            case (.array, _):
                throw JinjaFailure.type("can only concatenate list (not \"\(JinjaPython.typeName(rhs))\") to list")
            default:
                throw unsupported
            }
        case .multiply:
            let (sequence, countValue) = JinjaPython.number(lhs) == nil ? (lhs, rhs) : (rhs, lhs)
            guard case .int(let count)? = JinjaPython.number(countValue) else {
                if case .string = sequence { throw JinjaFailure.type("can't multiply sequence by non-int of type '\(JinjaPython.typeName(countValue))'") }
                if case .array = sequence { throw JinjaFailure.type("can't multiply sequence by non-int of type '\(JinjaPython.typeName(countValue))'") }
                throw unsupported
            }
            let times = max(count, 0)
            switch sequence {
            case .string(let text):
                let (bytes, overflow) = text.utf8.count.multipliedReportingOverflow(by: times)
                if overflow || bytes > options.maxOutputBytes {
                    throw JinjaFailure(.limit, "the template built a string over \(options.maxOutputBytes) bytes")
                }
                return .string(String(repeating: text, count: times))
            case .array(let items):
                let (total, overflow) = items.count.multipliedReportingOverflow(by: times)
                if overflow { throw JinjaFailure(.limit, "the template built a list too large") }
                try charge(total)
                return .array(Array([[JinjaValue]](repeating: items, count: times).joined()))
            default:
                throw unsupported
            }
        case .modulo:
            if case .string(let format) = lhs {
                return .string(try JinjaFormat.percent(format, argument: rhs, interpreter: self))
            }
            throw unsupported
        default:
            throw unsupported
        }
    }

    private func arithmetic(_ op: JinjaBinaryOperator, _ a: JinjaPython.Number, _ b: JinjaPython.Number) throws -> JinjaValue {
        if case let (.int(x), .int(y)) = (a, b) {
            switch op {
            case .add: return try checked(x.addingReportingOverflow(y))
            case .subtract: return try checked(x.subtractingReportingOverflow(y))
            case .multiply: return try checked(x.multipliedReportingOverflow(by: y))
            case .divide:
                if y == 0 { throw JinjaFailure.type("division by zero") }
                return .double(Double(x) / Double(y))
            case .floorDivide, .modulo:
                if y == 0 { throw JinjaFailure.type("integer division or modulo by zero") }
                let (quotient, overflow) = x.dividedReportingOverflow(by: y)
                if overflow { throw JinjaInterpreter.overflow() }
                let remainder = x - quotient * y
                let adjust = remainder != 0 && ((remainder < 0) != (y < 0))
                return op == .floorDivide ? .int(adjust ? quotient - 1 : quotient) : .int(adjust ? remainder + y : remainder)
            case .power:
                if y < 0 {
                    if x == 0 { throw JinjaFailure.type("0.0 cannot be raised to a negative power") }
                    return .double(Foundation.pow(Double(x), Double(y)))
                }
                var result = 1, base = x, exponent = y
                while exponent > 0 {
                    if exponent & 1 == 1 {
                        let (r, o) = result.multipliedReportingOverflow(by: base)
                        if o { throw JinjaInterpreter.overflow() }
                        result = r
                    }
                    exponent >>= 1
                    if exponent > 0 {
                        let (square, o) = base.multipliedReportingOverflow(by: base)
                        if o { throw JinjaInterpreter.overflow() }
                        base = square
                    }
                }
                return .int(result)
            }
        }
        let x = a.asDouble, y = b.asDouble
        switch op {
        case .add: return .double(x + y)
        case .subtract: return .double(x - y)
        case .multiply: return .double(x * y)
        case .divide:
            if y == 0 { throw JinjaFailure.type("float division by zero") }
            return .double(x / y)
        case .floorDivide:
            if y == 0 { throw JinjaFailure.type("float floor division by zero") }
            return .double(((x - JinjaInterpreter.pythonFmod(x, y)) / y).rounded())
        case .modulo:
            if y == 0 { throw JinjaFailure.type("float modulo") }
            return .double(JinjaInterpreter.pythonFmod(x, y))
        case .power:
            if x == 0 && y < 0 { throw JinjaFailure.type("0.0 cannot be raised to a negative power") }
            if x < 0 && y.rounded() != y {
                throw JinjaFailure(.unsupported, "a negative number raised to a fractional power gives a complex number")
            }
            return .double(Foundation.pow(x, y))
        }
    }

    /// Python's float `%`: the result takes the sign of the divisor.
    static func pythonFmod(_ x: Double, _ y: Double) -> Double {
        var r = fmod(x, y)
        if r != 0 {
            if (r < 0) != (y < 0) { r += y }
        } else {
            r = y < 0 ? -0.0 : 0.0
        }
        return r
    }

    private func checked(_ result: (partialValue: Int, overflow: Bool)) throws -> JinjaValue {
        if result.overflow { throw JinjaInterpreter.overflow() }
        return .int(result.partialValue)
    }

    func compare(_ lhs: JinjaValue, _ op: JinjaCompareOperator, _ rhs: JinjaValue) throws -> Bool {
        switch op {
        case .eq: return JinjaPython.equals(lhs, rhs)
        case .ne: return !JinjaPython.equals(lhs, rhs)
        case .lt: return try JinjaPython.compare(lhs, .lt, rhs)
        case .le: return try JinjaPython.compare(lhs, .le, rhs)
        case .gt: return try JinjaPython.compare(lhs, .gt, rhs)
        case .ge: return try JinjaPython.compare(lhs, .ge, rhs)
        case .in: return try contains(rhs, lhs)
        case .notIn: return !(try contains(rhs, lhs))
        }
    }

    /// Python's `item in container`.
    func contains(_ container: JinjaValue, _ item: JinjaValue) throws -> Bool {
        switch container {
        case .string(let text):
            guard case .string(let needle) = item else {
                throw JinjaFailure.type("'in <string>' requires string as left operand, not \(JinjaPython.typeName(item))")
            }
            return JinjaMethods.find(Array(text.unicodeScalars), Array(needle.unicodeScalars)) != nil
        case .dictionary(let dictionary):
            if case .string(let key) = item { return dictionary[key] != nil }
            return false
        case .array, .undefined:
            return try iterate(container).contains { JinjaPython.equals($0, item) }
        case .object(let object):
            guard case .iterator = object.kind else {
                throw JinjaFailure.type("argument of type '\(JinjaPython.typeName(container))' is not iterable")
            }
            return try iterate(container).contains { JinjaPython.equals($0, item) }
        default:
            throw JinjaFailure.type("argument of type '\(JinjaPython.typeName(container))' is not iterable")
        }
    }

    // MARK: - Calls

    private func evaluateCall(
        _ calleeExpr: JinjaExpr, _ arguments: JinjaArguments, _ scope: JinjaScope,
        extraKeyword: [(String, JinjaValue)]
    ) throws -> JinjaValue {
        let callee = try evaluate(calleeExpr, scope)
        let (positional, keyword) = try evaluateArguments(arguments, scope)
        return try call(callee, positional, keyword + extraKeyword)
    }

    func evaluateArguments(_ arguments: JinjaArguments, _ scope: JinjaScope) throws -> ([JinjaValue], [(String, JinjaValue)]) {
        var positional = try arguments.positional.map { try evaluate($0, scope) }
        var keyword = try arguments.keyword.map { ($0.name, try evaluate($0.value, scope)) }
        if let star = arguments.star { positional += try iterate(try evaluate(star, scope)) }
        if let starStar = arguments.starStar {
            guard case .dictionary(let dictionary) = try evaluate(starStar, scope) else {
                throw JinjaFailure.type("argument after ** must be a mapping")
            }
            keyword += dictionary.pairs.map { ($0.key, $0.value) }
        }
        return (positional, keyword)
    }

    func call(_ callee: JinjaValue, _ positional: [JinjaValue], _ keyword: [(String, JinjaValue)]) throws -> JinjaValue {
        switch callee {
        case .undefined(let message):
            throw JinjaFailure(.runtime, message)
        case .object(let object):
            switch object.kind {
            case .macro(let macro): return try callMacro(macro, positional, keyword)
            case .function(let name): return try callGlobal(name, positional, keyword)
            case .method(let receiver, let name):
                return try JinjaMethods.call(receiver, name, positional, keyword, interpreter: self)
            default: break
            }
        default:
            break
        }
        throw JinjaFailure.type("'\(JinjaPython.typeName(callee))' object is not callable")
    }

    private func callMacro(_ macro: JinjaMacro, _ positional: [JinjaValue], _ keyword: [(String, JinjaValue)]) throws -> JinjaValue {
        callDepth += 1
        defer { callDepth -= 1 }
        if callDepth > options.maxCallDepth {
            throw JinjaFailure(
                .limit, "macro calls nested more than \(options.maxCallDepth) deep (endless recursion in '\(macro.name)'?)")
        }
        let definition = macro.definition
        let parameters = definition.parameters
        let frame = JinjaScope(parent: macro.closure)
        var bound = [JinjaValue?](repeating: nil, count: parameters.count)
        var varargs: [JinjaValue] = []
        for (index, value) in positional.enumerated() {
            if index < parameters.count { bound[index] = value } else { varargs.append(value) }
        }
        var kwargs = JinjaDictionary()
        var caller: JinjaValue?
        for (name, value) in keyword {
            if let index = parameters.firstIndex(of: name) {
                if bound[index] != nil {
                    throw JinjaFailure.type("macro '\(macro.name)' got multiple values for argument '\(name)'")
                }
                bound[index] = value
            } else if name == "caller" {
                caller = value
            } else {
                kwargs[name] = value
            }
        }
        let firstDefault = parameters.count - definition.defaults.count
        for (index, name) in parameters.enumerated() {
            if let value = bound[index] {
                frame.set(name, value)
            } else if index >= firstDefault {
                frame.set(name, try evaluate(definition.defaults[index - firstDefault], frame))
            } else {
                frame.set(name, .undefined("parameter '\(name)' was not provided"))
            }
        }
        frame.set("varargs", .array(varargs))
        frame.set("kwargs", .dictionary(kwargs))
        if let caller { frame.set("caller", caller) }
        var out = ""
        _ = try execute(definition.body, frame, &out)
        return .string(out)
    }

    /// Keyword arguments collected into a dictionary, as `dict(...)` and `namespace(...)` build them.
    private func dictionaryArgument(_ function: String, _ positional: [JinjaValue], _ keyword: [(String, JinjaValue)]) throws -> JinjaDictionary {
        guard positional.count <= 1 else {
            throw JinjaFailure.type("\(function) expected at most 1 argument, got \(positional.count)")
        }
        var result = JinjaDictionary()
        if let source = positional.first {
            switch source {
            case .dictionary(let dictionary):
                result = dictionary
            default:
                for (index, pair) in try iterate(source).enumerated() {
                    let parts = try iterate(pair)
                    guard parts.count == 2 else {
                        throw JinjaFailure.type(
                            "dictionary update sequence element #\(index) has length \(parts.count); 2 is required")
                    }
                    guard case .string(let key) = parts[0] else {
                        throw JinjaFailure(.unsupported, "unsupported dictionary key of type '\(JinjaPython.typeName(parts[0]))'")
                    }
                    result[key] = parts[1]
                }
            }
        }
        for (name, value) in keyword { result[name] = value }
        return result
    }

    private func callGlobal(_ name: String, _ positional: [JinjaValue], _ keyword: [(String, JinjaValue)]) throws -> JinjaValue {
        switch name {
        case "range":
            guard keyword.isEmpty else { throw JinjaFailure.type("range() takes no keyword arguments") }
            guard (1...3).contains(positional.count) else {
                throw JinjaFailure.type("range expected 1 to 3 arguments, got \(positional.count)")
            }
            let numbers = try positional.map { value -> Int in
                guard let i = JinjaInterpreter.integerIndex(value) else {
                    throw JinjaFailure.type("'\(JinjaPython.typeName(value))' object cannot be interpreted as an integer")
                }
                return i
            }
            let (start, stop) = numbers.count == 1 ? (0, numbers[0]) : (numbers[0], numbers[1])
            let step = numbers.count == 3 ? numbers[2] : 1
            if step == 0 { throw JinjaFailure.type("range() arg 3 must not be zero") }
            let values = stride(from: start, to: stop, by: step)
            if values.underestimatedCount > options.maxRange {
                throw JinjaFailure(
                    .limit, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (\(options.maxRange)).")
            }
            try charge(values.underestimatedCount)
            return .array(values.map { .int($0) })
        case "dict":
            let dictionary = JinjaValue.dictionary(try dictionaryArgument("dict", positional, keyword))
            try checkNesting(dictionary)
            return dictionary
        case "namespace":
            let attributes = try dictionaryArgument("namespace", positional, keyword)
            for key in attributes.keys { try JinjaInterpreter.checkNamespaceName(key) }
            try checkNesting(.dictionary(attributes))
            return make(JinjaObject(.namespace, attributes: attributes))
        case "raise_exception":
            throw JinjaFailure(.raised, try positional.first.map(text) ?? "")
        case "strftime_now":
            guard let format = positional.first else {
                throw JinjaFailure.type("strftime_now() missing 1 required positional argument: 'format'")
            }
            return .string(try JinjaFormat.formatTime(try text(format), date: options.now(), timeZone: options.timeZone))
        default:
            throw JinjaFailure(.unsupported, "unsupported function '\(name)'")
        }
    }
}
