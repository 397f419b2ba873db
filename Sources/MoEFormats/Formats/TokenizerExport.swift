import MoESupport

/// Builds HF tokenizer files (tokenizer.json, tokenizer_config.json,
/// special_tokens_map.json) from a GGUF file's tokenizer metadata.
/// Supports byte-level BPE vocabularies (`tokenizer.ggml.model` = "gpt2").
public enum TokenizerExport {
  public struct Files {
    public var tokenizerJSON: JSON
    public var tokenizerConfig: JSON
    public var specialTokensMap: JSON
  }

  /// Token types in GGUF metadata (llama.cpp's llama_token_type).
  static let controlType = 3
  static let userDefinedType = 4

  public static func build(from g: GGUFFile, maxLength: Int) throws -> Files {
    let what = "'\(g.path)'"
    guard let model = g.value("tokenizer.ggml.model")?.stringValue else {
      throw MoEError.notFound("\(what): no tokenizer.ggml.model metadata")
    }
    guard model == "gpt2" else {
      throw MoEError.unsupported("\(what): tokenizer model '\(model)' cannot be exported (only byte-level BPE, 'gpt2')")
    }
    guard let tokensV = g.value("tokenizer.ggml.tokens")?.arrayValue else {
      throw MoEError.notFound("\(what): no tokenizer.ggml.tokens")
    }
    var tokens: [String] = []
    tokens.reserveCapacity(tokensV.count)
    for t in tokensV {
      guard let s = t.stringValue else { throw MoEError.format("\(what): tokenizer.ggml.tokens holds a non-string") }
      tokens.append(s)
    }
    let types = (g.value("tokenizer.ggml.token_type")?.arrayValue ?? []).map { $0.intValue ?? 1 }
    let merges = (g.value("tokenizer.ggml.merges")?.arrayValue ?? []).compactMap { $0.stringValue }
    func special(_ key: String) -> String? {
      guard let id = g.value("tokenizer.ggml.\(key)_token_id")?.intValue, id >= 0, id < tokens.count else { return nil }
      return tokens[id]
    }

    var added: [JSON] = []
    for (id, tok) in tokens.enumerated() {
      let type = id < types.count ? types[id] : 1
      guard type == controlType || type == userDefinedType else { continue }
      added.append(.object([
        ("id", .int(id)), ("content", .string(tok)), ("single_word", .bool(false)),
        ("lstrip", .bool(false)), ("rstrip", .bool(false)), ("normalized", .bool(false)),
        ("special", .bool(type == controlType)),
      ]))
    }
    let pre = g.value("tokenizer.ggml.pre")?.stringValue ?? "default"
    let byteLevel: JSON = .object([
      ("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)),
      ("trim_offsets", .bool(true)), ("use_regex", .bool(true)),
    ])
    // SmolLM/StarCoder-style vocabularies split digits individually before the byte-level regex.
    let preTokenizer: JSON = ["smollm", "starcoder", "refact"].contains(pre)
      ? .object([("type", .string("Sequence")), ("pretokenizers", .array([
          .object([("type", .string("Digits")), ("individual_digits", .bool(true))]), byteLevel]))])
      : byteLevel
    let tokenizer: JSON = .object([
      ("version", .string("1.0")),
      ("truncation", .null), ("padding", .null),
      ("added_tokens", .array(added)),
      ("normalizer", .null),
      ("pre_tokenizer", preTokenizer),
      ("post_processor", .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(true)),
                                  ("trim_offsets", .bool(false)), ("use_regex", .bool(true))])),
      ("decoder", .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(true)),
                           ("trim_offsets", .bool(true)), ("use_regex", .bool(true))])),
      ("model", .object([
        ("type", .string("BPE")), ("dropout", .null), ("unk_token", .null),
        ("continuing_subword_prefix", .null), ("end_of_word_suffix", .null),
        ("fuse_unk", .bool(false)), ("byte_fallback", .bool(false)), ("ignore_merges", .bool(false)),
        ("vocab", .object(tokens.enumerated().map { ($0.element, .int($0.offset)) })),
        ("merges", .array(merges.map { .string($0) })),
      ])),
    ])

    var config: [(String, JSON)] = [
      ("add_bos_token", .bool(g.value("tokenizer.ggml.add_bos_token")?.boolValue ?? false)),
      ("add_eos_token", .bool(g.value("tokenizer.ggml.add_eos_token")?.boolValue ?? false)),
      ("added_tokens_decoder", .object(added.map { t in
        (String(t["id"]?.intValue ?? 0), .object((t.objectValue ?? []).filter { $0.0 != "id" }))
      })),
      ("clean_up_tokenization_spaces", .bool(false)),
      ("model_max_length", .int(maxLength)),
      ("tokenizer_class", .string("GPT2Tokenizer")),
    ]
    var specials: [(String, JSON)] = []
    for (key, name) in [("bos", "bos_token"), ("eos", "eos_token"), ("unknown", "unk_token"), ("padding", "pad_token")] {
      if let t = special(key) {
        config.append((name, .string(t)))
        specials.append((name, .string(t)))
      }
    }
    if let template = g.value("tokenizer.chat_template")?.stringValue {
      config.append(("chat_template", .string(template)))
    }
    return Files(tokenizerJSON: tokenizer, tokenizerConfig: .object(config), specialTokensMap: .object(specials))
  }
}
