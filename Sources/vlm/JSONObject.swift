import Foundation

/// A JSON object that keeps its keys in the order given (JSONSerialization would sort or shuffle them).
struct JSONObject {
    var fields: [(String, Any)]

    init(_ fields: [(String, Any)]) { self.fields = fields }

    func serialized() -> String { Self.encode(self) }

    static func encode(_ value: Any) -> String {
        switch value {
        case let o as JSONObject:
            return "{" + o.fields.map { "\(encodeString($0.0)):\(encode($0.1))" }.joined(separator: ",") + "}"
        case let d as [String: Any]:
            return "{" + d.keys.sorted().map { "\(encodeString($0)):\(encode(d[$0]!))" }.joined(separator: ",") + "}"
        case let a as [Any]:
            return "[" + a.map(encode).joined(separator: ",") + "]"
        case let s as String:
            return encodeString(s)
        case let b as Bool:
            return b ? "true" : "false"
        case let i as Int:
            return String(i)
        case let i as Int64:
            return String(i)
        case let f as Float:
            return f.isFinite ? "\(f)" : "null"
        case let d as Double:
            return d.isFinite ? "\(d)" : "null"
        default:
            return "null"
        }
    }

    static func encodeString(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }
}
