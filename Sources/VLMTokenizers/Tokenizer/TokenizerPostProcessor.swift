import Foundation

/// One item of a TemplateProcessing `single` template.
enum PostProcessorTemplateItem: Equatable {
    case sequence
    case special([Int])
}

/// The `post_processor` stage of tokenizer.json; only applied when `addSpecialTokens` is true.
indirect enum TokenizerPostProcessor {
    /// ByteLevel only adjusts offsets, which this tokenizer does not report.
    case byteLevel
    case template(single: [PostProcessorTemplateItem])
    /// RobertaProcessing / BertProcessing on a single sequence: `cls A sep`.
    case clsSep(cls: Int, sep: Int)
    case sequence([TokenizerPostProcessor])

    static let supportedTypes = ["ByteLevel", "TemplateProcessing", "RobertaProcessing", "BertProcessing", "Sequence"]

    static func parse(_ node: TokenizerJSONNode) throws -> TokenizerPostProcessor? {
        if node.isNull { return nil }
        let type = try node.typeString()
        switch type {
        case "ByteLevel":
            return .byteLevel
        case "TemplateProcessing":
            let specialNode = node["special_tokens"]
            var specials: [String: [Int]] = [:]
            if !specialNode.isNull {
                for key in try specialNode.keys() {
                    specials[key] = try specialNode[key]["ids"].array().map { try $0.int() }
                }
            }
            var items: [PostProcessorTemplateItem] = []
            for item in try node["single"].array() {
                if !item["Sequence"].isNull {
                    items.append(.sequence)
                } else if !item["SpecialToken"].isNull {
                    let name = try item["SpecialToken"]["id"].string()
                    guard let ids = specials[name] else {
                        throw item["SpecialToken"]["id"].invalid(
                            "special token \(name.debugDescription) is not listed in \(specialNode.path)")
                    }
                    items.append(.special(ids))
                } else {
                    throw item.wrongType(#"{"Sequence": ...} or {"SpecialToken": ...}"#)
                }
            }
            return .template(single: items)
        case "RobertaProcessing", "BertProcessing":
            func pair(_ key: String) throws -> Int {
                let parts = try node[key].array()
                guard parts.count == 2 else { throw node[key].wrongType("a [token, id] pair") }
                return try parts[1].int()
            }
            return .clsSep(cls: try pair("cls"), sep: try pair("sep"))
        case "Sequence":
            return .sequence(try node["processors"].array().compactMap { try parse($0) })
        default:
            throw TokenizerError.unsupportedType(file: node.file, path: node.path.isEmpty ? "type" : "\(node.path).type",
                                                 type: type, supported: supportedTypes)
        }
    }

    func process(_ ids: [Int]) -> [Int] {
        switch self {
        case .byteLevel:
            return ids
        case .template(let items):
            var out: [Int] = []
            out.reserveCapacity(ids.count + 4)
            for item in items {
                switch item {
                case .sequence: out.append(contentsOf: ids)
                case .special(let s): out.append(contentsOf: s)
                }
            }
            return out
        case let .clsSep(cls, sep):
            return [cls] + ids + [sep]
        case .sequence(let items):
            var cur = ids
            for p in items { cur = p.process(cur) }
            return cur
        }
    }
}
