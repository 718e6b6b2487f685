// Jinja's compile-time constant folding, which changes what some templates render: jinja2 3.1.6 optimizer.py
// folds every expression whose `as_const` succeeds into a constant (nodes.py `as_const` per node type), and
// compiler.py renders a constant `{{ }}` child ahead of time (`_output_child_to_const`).
//
// It matters because `as_const` short-circuits (`'' and x|nosuch` folds to '' before the unknown filter is
// checked), and goes through Jinja's forgiving getitem, where a failed slice is Undefined instead of an error.

struct JinjaOptimizer {
    /// Evaluates operators and filters at parse time, with the same limits as a render.
    private let interpreter = JinjaInterpreter(options: JinjaRenderOptions())

    func optimize(_ nodes: [JinjaNode]) -> [JinjaNode] {
        nodes.map(optimize)
    }

    private func optimize(_ node: JinjaNode) -> JinjaNode {
        switch node {
        case .text, .loopBreak, .loopContinue, .declareMissing:
            return node
        case .output(let expr):
            let folded = fold(expr)
            if let value = constant(folded), let text = try? interpreter.text(value) { return .text(text) }
            return .output(folded)
        case .ifChain(let branches, let otherwise):
            return .ifChain(branches: branches.map { (fold($0.condition), optimize($0.body)) }, otherwise: optimize(otherwise))
        case .forLoop(let loop):
            return .forLoop(JinjaForLoop(
                target: loop.target, iterable: fold(loop.iterable), condition: loop.condition.map(fold),
                body: optimize(loop.body), otherwise: optimize(loop.otherwise), line: loop.line))
        case .assign(let target, let expr, let line):
            return .assign(target, fold(expr), line: line)
        case .assignBlock(let target, let filter, let body, let line):
            return .assignBlock(target, filter: filter.map(fold), body: optimize(body), line: line)
        case .macro(let definition):
            return .macro(optimize(definition))
        case .callBlock(let call, let caller):
            return .callBlock(call: fold(call), caller: optimize(caller))
        case .filterBlock(let filter, let body, let line):
            return .filterBlock(filter: fold(filter), body: optimize(body), line: line)
        case .with(let assignments, let body):
            return .with(assignments: assignments.map { ($0.target, fold($0.value)) }, body: optimize(body))
        case .scope(let body):
            return .scope(optimize(body))
        }
    }

    private func optimize(_ definition: JinjaMacroDefinition) -> JinjaMacroDefinition {
        JinjaMacroDefinition(
            name: definition.name, parameters: definition.parameters, defaults: definition.defaults.map(fold),
            body: optimize(definition.body), line: definition.line)
    }

    /// Replaces the expression by a literal when it is constant and its value has a safe repr (no Undefined,
    /// no objects), as `Const.from_untrusted` requires.
    /// Folds bottom-up, as the optimizer's generic_visit does: children first, then the node itself.
    func fold(_ expr: JinjaExpr) -> JinjaExpr {
        if case .literal = expr.kind { return expr }
        let folded = expr.mapChildren(fold)
        switch folded.kind {
        case .slice: return folded  // folded as part of its subscript
        case .tuple: return folded  // stays a tuple node: `'%s %s' % (a, b)` reads it as the argument list
        default: break
        }
        if let value = constant(folded), JinjaOptimizer.hasSafeRepr(value) {
            return JinjaExpr(kind: .literal(value), line: expr.line)
        }
        return folded
    }

    private static func hasSafeRepr(_ value: JinjaValue) -> Bool {
        switch value {
        case .none, .bool, .int, .double, .string: return true
        case .array(let items): return items.allSatisfy(hasSafeRepr)
        case .dictionary(let dictionary): return dictionary.values.allSatisfy(hasSafeRepr)
        case .undefined, .object: return false
        }
    }

    /// Jinja's `as_const`: the value, or nil where it raises Impossible (a variable, a call, a failure).
    func constant(_ expr: JinjaExpr) -> JinjaValue? {
        do {
            return try constantOrThrow(expr)
        } catch {
            return nil
        }
    }

    private struct Impossible: Error {}

    private func constantOrThrow(_ expr: JinjaExpr) throws -> JinjaValue {
        let interpreter = self.interpreter
        func value(_ expr: JinjaExpr) throws -> JinjaValue { try constantOrThrow(expr) }
        func arguments(_ arguments: JinjaArguments) throws -> ([JinjaValue], [(String, JinjaValue)]) {
            var positional = try arguments.positional.map(value)
            var keyword = try arguments.keyword.map { ($0.name, try value($0.value)) }
            if let star = arguments.star { positional += try interpreter.iterate(try value(star)) }
            if let starStar = arguments.starStar {
                guard case .dictionary(let dictionary) = try value(starStar) else { throw Impossible() }
                keyword += dictionary.pairs.map { ($0.key, $0.value) }
            }
            return (positional, keyword)
        }
        switch expr.kind {
        case .literal(let constant):
            return constant
        case .name, .call, .slice:
            throw Impossible()
        case .list(let items), .tuple(let items):
            return .array(try items.map(value))
        case .dict(let pairs):
            var dictionary = JinjaDictionary()
            for pair in pairs {
                guard case .string(let key) = try value(pair.key) else { throw Impossible() }
                dictionary[key] = try value(pair.value)
            }
            return .dictionary(dictionary)
        case .attribute(let base, let name):
            return try interpreter.getAttribute(try value(base), name)
        case .item(let base, let index):
            let container = try value(base)
            if case .slice(let start, let stop, let step) = index.kind {
                let bounds = (try start.map(value), try stop.map(value), try step.map(value))
                if case .undefined = container { throw Impossible() }  // Undefined.__getitem__ raises
                do {
                    return try interpreter.getSlice(container, bounds.0, bounds.1, bounds.2)
                } catch {
                    return .undefined("\(JinjaInterpreter.objectTypeRepr(container)) has no element slice")
                }
            }
            return try interpreter.getItem(container, try value(index))
        case .filter(let base, let name, let args):
            guard let base, JinjaInterpreter.supportedFilters.contains(name),
                !["map", "select", "reject", "selectattr", "rejectattr"].contains(name)  // need the render context
            else { throw Impossible() }
            let input = try value(base)
            let (positional, keyword) = try arguments(args)
            return try interpreter.filter(name, input, positional, keyword)
        case .test(let base, let name, let args):
            guard JinjaInterpreter.supportedTests.contains(name) else { throw Impossible() }
            let input = try value(base)
            let (positional, keyword) = try arguments(args)
            return .bool(try interpreter.test(name, input, positional, keyword))
        case .negative(let operand):
            return try interpreter.negate(try value(operand))
        case .positive(let operand):
            let number = try value(operand)
            guard JinjaPython.number(number) != nil else { throw Impossible() }
            if case .bool(let b) = number { return .int(b ? 1 : 0) }
            return number
        case .not(let operand):
            return .bool(!JinjaPython.truthy(try value(operand)))
        case .binary(let op, let left, let right):
            let lhs = try value(left)
            if op == .modulo, case .string(let format) = lhs, case .tuple(let items) = right.kind {
                return .string(try JinjaFormat.percent(format, arguments: try items.map(value), interpreter: interpreter))
            }
            return try interpreter.binary(op, lhs, try value(right))
        case .and(let left, let right):
            let lhs = try value(left)
            return JinjaPython.truthy(lhs) ? try value(right) : lhs
        case .or(let left, let right):
            let lhs = try value(left)
            return JinjaPython.truthy(lhs) ? lhs : try value(right)
        case .concat(let parts):
            var joined = ""
            for part in parts {
                joined += try interpreter.text(try value(part))
                try interpreter.checkSize(joined)
            }
            return .string(joined)
        case .compare(let first, let operations):
            var left = try value(first)
            for operation in operations {
                let right = try value(operation.operand)
                if !(try interpreter.compare(left, operation.op, right)) { return .bool(false) }
                left = right
            }
            return .bool(true)
        case .conditional(let test, let then, let otherwise):
            if JinjaPython.truthy(try value(test)) { return try value(then) }
            guard let otherwise else { throw Impossible() }
            return try value(otherwise)
        }
    }
}
