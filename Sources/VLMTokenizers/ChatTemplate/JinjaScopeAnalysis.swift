// Jinja resolves variables per compiled scope ("frame"), decided before rendering: jinja2 3.1.6 idtracking.py
// (Symbols.load/store/branch_update, FrameSymbolVisitor, RootVisitor). A scope that assigns a name before
// reading it starts that name as "missing", so a nested loop or macro that reads it before the assignment runs
// sees Undefined, not the template variable of the same name:
//
//     {% for m in messages %}{{ tools }}{% endfor %}{% set tools = [] %}   → prints nothing, whatever tools is
//
// The interpreter otherwise looks names up through the scope chain, which agrees with Jinja everywhere else;
// this pass finds those "missing" names and marks each scope's body with a `.declareMissing` statement.

/// One scope's symbol table, as Jinja's `Symbols`.
private final class JinjaSymbols {
    enum Load { case resolve, alias, missing, parameter }

    let parent: JinjaSymbols?
    var references: Set<String> = []
    var loads: [String: Load] = [:]
    var stores: Set<String> = []

    init(parent: JinjaSymbols?) {
        self.parent = parent
    }

    func copy() -> JinjaSymbols {
        let copy = JinjaSymbols(parent: parent)
        copy.references = references
        copy.loads = loads
        copy.stores = stores
        return copy
    }

    func findReference(_ name: String) -> Bool {
        references.contains(name) || (parent?.findReference(name) ?? false)
    }

    private func define(_ name: String, _ load: Load) {
        references.insert(name)
        loads[name] = load
    }

    func load(_ name: String) {
        if !findReference(name) { define(name, .resolve) }
    }

    func store(_ name: String) {
        stores.insert(name)
        guard !references.contains(name) else { return }
        define(name, parent?.findReference(name) == true ? .alias : .missing)
    }

    func declareParameter(_ name: String) {
        stores.insert(name)
        define(name, .parameter)
    }

    /// After an if statement: a name first assigned inside a branch is looked up (or aliased) when the scope
    /// starts, instead of starting missing.
    func branchUpdate(_ branches: [JinjaSymbols]) {
        let branchStores = branches.reduce(into: Set<String>()) { $0.formUnion($1.stores) }.subtracting(stores)
        for branch in branches {
            references.formUnion(branch.references)
            loads.merge(branch.loads) { _, new in new }
            stores.formUnion(branch.stores)
        }
        for name in branchStores {
            loads[name] = parent?.findReference(name) == true ? .alias : .resolve
        }
    }

    var missingNames: [String] { loads.filter { $0.value == .missing }.map(\.key).sorted() }
}

enum JinjaScopeAnalysis {
    /// The template body with `.declareMissing` added to every scope that needs one.
    static func root(_ nodes: [JinjaNode]) -> [JinjaNode] {
        frame(nodes, parent: nil, parameters: [])
    }

    private static func frame(_ body: [JinjaNode], parent: JinjaSymbols?, parameters: [String]) -> [JinjaNode] {
        let symbols = JinjaSymbols(parent: parent)
        for name in parameters { symbols.declareParameter(name) }
        visit(body, symbols)
        let transformed = body.map { childFrames($0, symbols) }
        let missing = symbols.missingNames
        return missing.isEmpty ? transformed : [.declareMissing(missing)] + transformed
    }

    // MARK: - This scope's loads and stores (FrameSymbolVisitor)

    private static func visit(_ nodes: [JinjaNode], _ symbols: JinjaSymbols) {
        for node in nodes {
            switch node {
            case .output(let expr):
                loads(expr, symbols)
            case .ifChain(let branches, let otherwise):
                visitIf(branches[...], otherwise, symbols)
            case .forLoop(let loop):
                loads(loop.iterable, symbols)
            case .assign(let target, let expr, _):
                loads(expr, symbols)
                stores(target, symbols)
            case .assignBlock(let target, _, _, _):
                stores(target, symbols)
            case .macro(let definition):
                symbols.store(definition.name)
            case .callBlock(let call, _):
                loads(call, symbols)
            case .filterBlock(let filter, _, _):
                loads(filter, symbols)
            case .with(let assignments, _):
                for assignment in assignments { loads(assignment.value, symbols) }
            case .text, .loopBreak, .loopContinue, .declareMissing, .scope:
                break  // text, or a scope of its own
            }
        }
    }

    /// Jinja's If node has the first test, its body, the elif nodes (each an If without else) as one branch, and
    /// the else body as a third branch.
    private static func visitIf(
        _ branches: ArraySlice<(condition: JinjaExpr, body: [JinjaNode])>, _ otherwise: [JinjaNode], _ symbols: JinjaSymbols
    ) {
        guard let first = branches.first else { return }
        loads(first.condition, symbols)
        let body = symbols.copy()
        visit(first.body, body)
        let elifs = symbols.copy()
        for elif in branches.dropFirst() { visitIf([elif][...], [], elifs) }
        let orElse = symbols.copy()
        visit(otherwise, orElse)
        symbols.branchUpdate([body, elifs, orElse])
    }

    private static func loads(_ expr: JinjaExpr, _ symbols: JinjaSymbols) {
        if case .name(let name) = expr.kind { symbols.load(name) }
        for child in JinjaExpr.children(of: expr.kind) { loads(child, symbols) }
    }

    private static func stores(_ target: JinjaTarget, _ symbols: JinjaSymbols) {
        switch target {
        case .name(let name): symbols.store(name)
        case .tuple(let targets): for target in targets { stores(target, symbols) }
        case .namespaceAttribute(let name, _): symbols.load(name)
        }
    }

    private static func names(_ target: JinjaTarget) -> [String] {
        switch target {
        case .name(let name): return [name]
        case .tuple(let targets): return targets.flatMap(names)
        case .namespaceAttribute: return []
        }
    }

    // MARK: - Nested scopes

    private static func childFrames(_ node: JinjaNode, _ symbols: JinjaSymbols) -> JinjaNode {
        func macro(_ definition: JinjaMacroDefinition) -> JinjaMacroDefinition {
            JinjaMacroDefinition(
                name: definition.name, parameters: definition.parameters, defaults: definition.defaults,
                body: frame(definition.body, parent: symbols, parameters: definition.parameters + ["varargs", "kwargs", "caller"]),
                line: definition.line)
        }
        switch node {
        case .ifChain(let branches, let otherwise):
            return .ifChain(
                branches: branches.map { ($0.condition, $0.body.map { childFrames($0, symbols) }) },
                otherwise: otherwise.map { childFrames($0, symbols) })
        case .forLoop(let loop):
            return .forLoop(JinjaForLoop(
                target: loop.target, iterable: loop.iterable, condition: loop.condition,
                body: frame(loop.body, parent: symbols, parameters: names(loop.target) + ["loop"]),
                otherwise: frame(loop.otherwise, parent: symbols, parameters: []), line: loop.line))
        case .macro(let definition):
            return .macro(macro(definition))
        case .callBlock(let call, let caller):
            return .callBlock(call: call, caller: macro(caller))
        case .assignBlock(let target, let filter, let body, let line):
            return .assignBlock(target, filter: filter, body: frame(body, parent: symbols, parameters: []), line: line)
        case .filterBlock(let filter, let body, let line):
            return .filterBlock(filter: filter, body: frame(body, parent: symbols, parameters: []), line: line)
        case .with(let assignments, let body):
            return .with(
                assignments: assignments,
                body: frame(body, parent: symbols, parameters: assignments.flatMap { names($0.target) }))
        case .scope(let body):
            return .scope(frame(body, parent: symbols, parameters: []))
        default:
            return node
        }
    }
}
