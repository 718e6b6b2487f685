// Values a chat template reads and makes, with the Python semantics Jinja gives them.
// Reference: jinja2 3.1.6 (runtime.Undefined, utils.Namespace, runtime.LoopContext) as transformers 5.x runs it.

/// A value seen by a chat template: what `messages`, `tools` and the other template variables hold, and what
/// expressions evaluate to while the template renders.
///
/// Numbers, strings, lists and dictionaries follow Python: `.int` and `.double` are Python's `int` and `float`,
/// strings are sequences of Unicode scalars (Python code points), dictionaries keep insertion order.
/// `Equatable` is structural (`.int(1) != .double(1)`); the template's own `==` follows Python instead.
public enum JinjaValue: Sendable {
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([JinjaValue])
    case dictionary(JinjaDictionary)
    /// Jinja's `Undefined`: what a missing variable, key or attribute reads as. It prints as "", is falsy and
    /// iterates as empty; reading an attribute of it, calling it or doing arithmetic with it is an error.
    /// The payload is the message of that error, e.g. `'tools' is undefined`.
    case undefined(String)
    /// Objects a template makes while it renders: `namespace()`, `loop`, macros, built-in functions, bound
    /// methods and one-shot iterators (what `select`, `map` and `reverse` return). Only the interpreter makes them.
    case object(JinjaObject)
}

extension JinjaValue: Equatable {
    public static func == (lhs: JinjaValue, rhs: JinjaValue) -> Bool {
        switch (lhs, rhs) {
        case (.none, .none): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.int(a), .int(b)): return a == b
        case let (.double(a), .double(b)): return a == b
        case let (.string(a), .string(b)): return a.unicodeScalars.elementsEqual(b.unicodeScalars)
        case let (.array(a), .array(b)): return a == b
        case let (.dictionary(a), .dictionary(b)): return a == b
        case let (.undefined(a), .undefined(b)): return a == b
        case let (.object(a), .object(b)): return a === b
        default: return false
        }
    }
}

extension JinjaValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: JinjaValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JinjaValue)...) { self = .dictionary(JinjaDictionary(elements)) }
    public init(nilLiteral: ()) { self = .none }
}

extension JinjaValue: CustomStringConvertible {
    /// Python's `str()` of the value: what `{{ value }}` prints.
    public var description: String { JinjaPython.str(self) }
}

/// A string-keyed dictionary that keeps insertion order, like Python's `dict` (and JSON objects as Python reads them).
///
/// Keys are compared as Swift strings, so two keys that differ only in Unicode normalization are one key here
/// (Python keeps them apart); chat-template inputs do not rely on that.
public struct JinjaDictionary: Sendable {
    /// The keys, in insertion order.
    public private(set) var keys: [String] = []
    private var storage: [String: JinjaValue] = [:]

    public init() {}

    /// Builds a dictionary from pairs; a repeated key keeps its first position and its last value, as in Python.
    public init(_ pairs: [(String, JinjaValue)]) {
        for (key, value) in pairs { self[key] = value }
    }

    public var count: Int { keys.count }
    public var isEmpty: Bool { keys.isEmpty }

    /// The value stored under `key`; assigning `nil` removes the key.
    public subscript(key: String) -> JinjaValue? {
        get { storage[key] }
        set {
            if let newValue {
                if storage.updateValue(newValue, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }

    /// The values, in key order.
    public var values: [JinjaValue] { keys.map { storage[$0] ?? .none } }

    /// The (key, value) pairs, in key order.
    public var pairs: [(key: String, value: JinjaValue)] { keys.map { ($0, storage[$0] ?? .none) } }
}

extension JinjaDictionary: Equatable {
    /// Order-insensitive, like Python's dict equality.
    public static func == (lhs: JinjaDictionary, rhs: JinjaDictionary) -> Bool {
        lhs.storage == rhs.storage
    }
}

extension JinjaDictionary: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, JinjaValue)...) { self.init(elements) }
}

/// An object made by the interpreter while a template renders (see `JinjaValue.object`).
///
/// It is mutable (`{% set ns.x = ... %}`, iterators advance) but lives only inside one `render` call, on one
/// thread: no API hands one out, hence `@unchecked Sendable`.
public final class JinjaObject: @unchecked Sendable {
    enum Kind {
        /// `namespace(...)`: attributes in `attributes`, assignable with `{% set ns.name = ... %}`.
        case namespace
        /// The `loop` variable of a for loop: the iterated `items` and the current `position`.
        case loop
        /// A `{% macro %}`, or the `caller` of a `{% call %}` block.
        case macro(JinjaMacro)
        /// A global function such as `range` or `raise_exception`.
        case function(String)
        /// A method bound to its receiver, e.g. `message.content.strip`.
        case method(receiver: JinjaValue, name: String)
        /// A one-shot iterator (a Python generator or reverse iterator): `items` from `position` on.
        case iterator(typeName: String)
    }

    let kind: Kind
    var attributes: JinjaDictionary
    var items: [JinjaValue]
    var position = 0

    init(_ kind: Kind, attributes: JinjaDictionary = JinjaDictionary(), items: [JinjaValue] = []) {
        self.kind = kind
        self.attributes = attributes
        self.items = items
    }

    /// Takes what is left of an iterator, leaving it exhausted, as iterating a Python generator does.
    func drain() -> [JinjaValue] {
        let rest = position < items.count ? Array(items[position...]) : []
        position = items.count
        return rest
    }
}
