import Glibc
import Testing
@testable import MoESupport
@testable import MoEFormats

// MARK: - Fixtures

/// A small byte-level BPE vocabulary: ids 0...255 are the byte symbols (id =
/// byte), then a few merges, then added tokens after a hole in the ids.
private enum Fixture {
  /// Merges in rank order; the merged token gets id 256 + rank.
  static let merges: [(String, String)] = [
    ("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("'", "s"), ("i", "n"), ("Ġ", "in"), ("Ġ", "Ġ"), ("Ċ", "Ċ"),
    ("1", "2"), ("Ã", "¯"), ("n", "a"), ("na", "Ã¯"), ("v", "e"), ("Ġ", "c"), ("Ã", "©"), ("Ġc", "a"),
    ("f", "Ã©"), ("Ġca", "fÃ©"), ("naÃ¯", "ve"), ("ĠĠ", "Ġ"), ("Ġ", "w"), ("o", "r"), ("Ġw", "or"),
  ]
  /// Added tokens: (id, content, special).
  static let added: [(Int, String, Bool)] = [
    (300, "<|im_start|>", true), (301, "<|im_end|>", true), (302, "<x>", false), (303, "<x><y>", false),
    (304, "<|endoftext|>", true),
  ]

  static var byteSymbols: [String] { (0..<256).map { ByteLevel.encoded([UInt8($0)]) } }

  /// Byte-level token text to id.
  static let ids: [String: Int32] = {
    var d: [String: Int32] = [:]
    for (i, s) in byteSymbols.enumerated() { d[s] = Int32(i) }
    for (rank, (a, b)) in merges.enumerated() { d[a + b] = Int32(256 + rank) }
    for (id, content, _) in added { d[content] = Int32(id) }
    return d
  }()

  static func json(merges: [(String, String)] = merges, pairs: Bool = false,
                   extra: [(String, JSON)] = [], preTokenizer: JSON? = nil) -> JSON {
    var vocab: [(String, JSON)] = byteSymbols.enumerated().map { ($0.element, .int($0.offset)) }
    for (rank, (a, b)) in merges.enumerated() { vocab.append((a + b, .int(256 + rank))) }
    let mergeJSON: [JSON] = merges.map { pairs ? .array([.string($0.0), .string($0.1)]) : .string("\($0.0) \($0.1)") }
    let addedJSON: [JSON] = added.map { id, content, special in
      .object([("id", .int(id)), ("content", .string(content)), ("special", .bool(special)),
               ("lstrip", .bool(false)), ("rstrip", .bool(false)), ("normalized", .bool(false))])
    }
    let byteLevel: JSON = .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(false)),
                                   ("use_regex", .bool(true))])
    var pairsOut: [(String, JSON)] = [
      ("version", .string("1.0")),
      ("added_tokens", .array(addedJSON)),
      ("normalizer", .null),
      ("pre_tokenizer", preTokenizer ?? byteLevel),
      ("decoder", .object([("type", .string("ByteLevel"))])),
      ("model", .object([("type", .string("BPE")), ("vocab", .object(vocab)), ("merges", .array(mergeJSON))])),
    ]
    for (k, v) in extra {
      if let i = pairsOut.firstIndex(where: { $0.0 == k }) { pairsOut[i].1 = v } else { pairsOut.append((k, v)) }
    }
    return .object(pairsOut)
  }

  static func tokenizer() throws -> BPETokenizer { try BPETokenizer(tokenizerJSON: json()) }

  /// Ids of byte-level token texts; a missing one is a bug in the test.
  static func idsOf(_ tokens: [String]) -> [Int32] {
    tokens.map { t in
      guard let id = ids[t] else { Issue.record("fixture has no token '\(t)'"); return -1 }
      return id
    }
  }

  /// The fixture JSON with one change made by `edit` to its model object.
  static func editingModel(_ edit: (inout JSON) -> Void) -> JSON {
    var j = json()
    var model = j["model"] ?? .null
    edit(&model)
    j.set("model", model)
    return j
  }
}

/// Pre-tokens of `text` as strings.
private func preTokens(_ text: String, _ pre: PreTokenizer = .gpt2) -> [String] {
  let bytes = Array(text.utf8)
  var scratch = PreTokenizer.Scratch()
  var out: [String] = []
  bytes.withUnsafeBufferPointer { p in
    pre.split(p, 0..<p.count, scratch: &scratch) { r in
      out.append(String(decoding: UnsafeBufferPointer(rebasing: p[r]), as: UTF8.self))
    }
  }
  return out
}

/// Random strings: runs of tricky pieces and random scalars from every plane.
private func randomText(_ rng: inout Rng) -> String {
  let pieces = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u{a0}",
                "\u{3000}", "hello", " World", "naïve", "café", "日本", "e\u{301}", "123", "²", "Ⅻ", "!?", "...",
                "😀", "👍🏽", "🇫🇷", "<|im_start|>", "<|im_end|>", "<x>", "<x><y>", "<", "'", "\0"]
  var s = ""
  for _ in 0..<(1 + rng.below(16)) {
    if rng.below(3) == 0 {
      let planes: [ClosedRange<UInt32>] = [0...0x7F, 0x80...0x7FF, 0x800...0xFFFF, 0x10000...0x10FFFF]
      let r = planes[rng.below(planes.count)]
      let v = r.lowerBound + UInt32(rng.below(Int(r.upperBound - r.lowerBound) + 1))
      s.unicodeScalars.append(Unicode.Scalar(v) ?? " ")
    } else {
      s += pieces[rng.below(pieces.count)]
    }
  }
  return s
}

/// Expects `body` to throw a MoEError of `kind` whose message mentions every string in `mentions`.
private func expectError(_ kind: MoEErrorKind, mentions: [String] = [], _ body: () throws -> Void,
                         sourceLocation: SourceLocation = #_sourceLocation) {
  do {
    try body()
    Issue.record("expected a \(kind) error, nothing was thrown", sourceLocation: sourceLocation)
  } catch let e as MoEError {
    #expect(e.kind == kind, "\(e.message)", sourceLocation: sourceLocation)
    for m in mentions {
      #expect(e.message.contains(m), "'\(e.message)' does not mention '\(m)'", sourceLocation: sourceLocation)
    }
  } catch {
    Issue.record("expected a MoEError, got \(error)", sourceLocation: sourceLocation)
  }
}

// MARK: - Byte-level alphabet and pre-tokenizer

@Suite struct TokenizerPreTokenizerTests {
  @Test func byteLevelTableMatchesGPT2() {
    #expect(ByteLevel.encoded(Array(" \n\t!~".utf8)) == "ĠĊĉ!~")
    #expect(ByteLevel.encoded([0x00, 0x7F, 0xA0, 0xAD, 0xA1, 0xFF]) == "ĀġłŃ¡ÿ")
    #expect(ByteLevel.encoded(Array("é".utf8)) == "Ã©")
    // A bijection between the 256 bytes and 256 distinct scalars.
    #expect(Set(ByteLevel.scalarOfByte).count == 256)
    for b in 0..<256 { #expect(ByteLevel.decoded(ByteLevel.encoded([UInt8(b)])) == [UInt8(b)]) }
    #expect(ByteLevel.decoded("a b") == nil)  // ' ' is not in the alphabet
  }

  /// Text, GPT-2 split, split with digits isolated first (both checked against HF tokenizers).
  static let splits: [(String, [String], [String])] = [
    ("Hello world", ["Hello", " world"], ["Hello", " world"]),
    ("don't", ["don", "'t"], ["don", "'t"]),
    ("DON'T", ["DON", "'", "T"], ["DON", "'", "T"]),
    ("we'll they've I'm she'd you're it's",
     ["we", "'ll", " they", "'ve", " I", "'m", " she", "'d", " you", "'re", " it", "'s"],
     ["we", "'ll", " they", "'ve", " I", "'m", " she", "'d", " you", "'re", " it", "'s"]),
    ("it\u{2019}s", ["it", "\u{2019}", "s"], ["it", "\u{2019}", "s"]),
    ("a   b", ["a", "  ", " b"], ["a", "  ", " b"]),
    ("a\n\nb", ["a", "\n", "\n", "b"], ["a", "\n", "\n", "b"]),
    ("  hello", [" ", " hello"], [" ", " hello"]),
    ("hello  ", ["hello", "  "], ["hello", "  "]),
    ("x\t y", ["x", "\t", " y"], ["x", "\t", " y"]),
    ("x \ty", ["x", " ", "\t", "y"], ["x", " ", "\t", "y"]),
    ("abc123def", ["abc", "123", "def"], ["abc", "1", "2", "3", "def"]),
    ("a 123", ["a", " 123"], ["a", " ", "1", "2", "3"]),
    ("3.14", ["3", ".", "14"], ["3", ".", "1", "4"]),
    ("½²Ⅻ", ["½²Ⅻ"], ["½", "²", "Ⅻ"]),
    ("!!! ???", ["!!!", " ???"], ["!!!", " ???"]),
    ("naïve café 日本", ["naïve", " café", " 日本"], ["naïve", " café", " 日本"]),
    ("e\u{301}", ["e", "\u{301}"], ["e", "\u{301}"]),
    ("hi 😀😀!", ["hi", " 😀😀!"], ["hi", " 😀😀!"]),
    ("\u{a0}word", ["\u{a0}", "word"], ["\u{a0}", "word"]),
    ("x \u{a0}y", ["x", " ", "\u{a0}", "y"], ["x", " ", "\u{a0}", "y"]),
    ("?'s", ["?'", "s"], ["?'", "s"]),
    (" 's", [" '", "s"], [" '", "s"]),
    ("'", ["'"], ["'"]),
    ("'x", ["'", "x"], ["'", "x"]),
    ("''s", ["''", "s"], ["''", "s"]),
    ("a\r\n b", ["a", "\r\n", " b"], ["a", "\r\n", " b"]),
    ("end.\n", ["end", ".", "\n"], ["end", ".", "\n"]),
    ("x  \n  y", ["x", "  \n ", " y"], ["x", "  \n ", " y"]),
    ("$5 and 10%", ["$", "5", " and", " 10", "%"], ["$", "5", " and", " ", "1", "0", "%"]),
    ("", [], []),
    (" ", [" "], [" "]),
  ]

  @Test(arguments: 0..<splits.count)
  func splitsLikeTheGPT2Regex(_ index: Int) {
    let (text, gpt2, digits) = Self.splits[index]
    #expect(preTokens(text) == gpt2, "\(text.debugDescription)")
    #expect(preTokens(text, PreTokenizer(digits: .individual)) == digits, "\(text.debugDescription)")
  }

  @Test func digitRunsAndNoRegex() {
    #expect(preTokens("ab 123x4", PreTokenizer(digits: .runs)) == ["ab", " ", "123", "x", "4"])
    #expect(preTokens("ab  cd!", PreTokenizer(useRegex: false)) == ["ab  cd!"])
  }

  @Test func piecesCoverTheTextInOrder() {
    var rng = Rng(seed: 7)
    for _ in 0..<500 {
      let text = randomText(&rng)
      for pre in [PreTokenizer.gpt2, PreTokenizer(digits: .individual)] {
        let parts = preTokens(text, pre)
        #expect(parts.joined() == text)
        #expect(!parts.contains(""))
      }
    }
  }
}

// MARK: - BPE on the fixture

@Suite struct TokenizerBPETests {
  @Test func mergesByRank() throws {
    let tok = try Fixture.tokenizer()
    #expect(tok.vocabSize == 305)
    #expect(tok.encode("the cat's in", addSpecial: false) == Fixture.idsOf(["t", "he", "Ġca", "t", "'s", "Ġin"]))
    #expect(tok.encode(" the", addSpecial: false) == Fixture.idsOf(["Ġthe"]))
    #expect(tok.encode("naïve café", addSpecial: false) == Fixture.idsOf(["naÃ¯ve", "ĠcafÃ©"]))
    // Three spaces before a word: "  " then " world".
    #expect(tok.encode("a   world", addSpecial: false) == Fixture.idsOf(["a", "ĠĠ", "Ġwor", "l", "d"]))
    // Spaces at the end stay one run; leftmost pairs merge first.
    #expect(tok.encode("a   ", addSpecial: false) == Fixture.idsOf(["a", "ĠĠĠ"]))
    #expect(tok.encode("a    ", addSpecial: false) == Fixture.idsOf(["a", "ĠĠ", "ĠĠ"]))
    #expect(tok.encode("x\n\n\ny", addSpecial: false) == Fixture.idsOf(["x", "ĊĊ", "Ċ", "y"]))
    #expect(tok.encode("1234", addSpecial: false) == Fixture.idsOf(["12", "3", "4"]))
    #expect(tok.encode("don't", addSpecial: false) == Fixture.idsOf(["d", "o", "n", "'", "t"]))
    #expect(tok.encode("it's", addSpecial: false) == Fixture.idsOf(["i", "t", "'s"]))
    #expect(tok.encode("?!", addSpecial: false) == Fixture.idsOf(["?", "!"]))
    #expect(tok.encode("日", addSpecial: false) == [0xE6, 0x97, 0xA5])
    #expect(tok.encode("😀", addSpecial: false) == [0xF0, 0x9F, 0x98, 0x80])
    #expect(tok.encode("", addSpecial: true).isEmpty)
  }

  @Test func mergePairsAsArrays() throws {
    let tok = try BPETokenizer(tokenizerJSON: Fixture.json(pairs: true))
    #expect(tok.encode(" the café", addSpecial: false) == Fixture.idsOf(["Ġthe", "ĠcafÃ©"]))
  }

  @Test func addedTokensInText() throws {
    let tok = try Fixture.tokenizer()
    let text = "<|im_start|>user\nthe<|im_end|>"
    #expect(tok.encode(text, addSpecial: false) == [300] + Fixture.idsOf(["u", "s", "e", "r", "Ċ", "t", "he"]) + [301])
    // Not parsed: the special text is ordinary text ...
    let plain = tok.encode(text, addSpecial: false, parseSpecial: false)
    #expect(!plain.contains(300) && !plain.contains(301))
    #expect(tok.decode(plain) == text)
    // ... but non-special added tokens are always matched, longest first.
    #expect(tok.encode("a<x><y>b<x>", addSpecial: false, parseSpecial: false) == Fixture.idsOf(["a"]) + [303] + Fixture.idsOf(["b"]) + [302])
    // A special token glued to words splits them.
    #expect(tok.encode("the<|endoftext|>the", addSpecial: false) == Fixture.idsOf(["t", "he"]) + [304] + Fixture.idsOf(["t", "he"]))
    #expect(tok.encode("<|im_start", addSpecial: false) == Array("<|im_start".utf8).map { Int32($0) })
    #expect(tok.isSpecial(300) && tok.isSpecial(304) && !tok.isSpecial(302) && !tok.isSpecial(65) && !tok.isSpecial(-1) && !tok.isSpecial(999))
    #expect(tok.id(of: "<|im_end|>") == 301)
    #expect(tok.id(of: "Ġthe") == 258)
    #expect(tok.id(of: "nope") == nil)
  }

  @Test func stripFlagsSwallowWhitespace() throws {
    var j = Fixture.json()
    var added = j["added_tokens"]?.arrayValue ?? []
    added.append(.object([("id", .int(305)), ("content", .string("<m>")), ("special", .bool(true)),
                          ("lstrip", .bool(true)), ("rstrip", .bool(true))]))
    j.set("added_tokens", .array(added))
    let tok = try BPETokenizer(tokenizerJSON: j)
    #expect(tok.encode("a \u{a0} <m>\n b", addSpecial: false) == Fixture.idsOf(["a"]) + [305] + Fixture.idsOf(["b"]))
  }

  @Test func decodes() throws {
    let tok = try Fixture.tokenizer()
    #expect(tok.decode(Fixture.idsOf(["Ġthe", "ĠcafÃ©"])) == " the café")
    #expect(tok.decode([300, 116, 301]) == "<|im_start|>t<|im_end|>")
    #expect(tok.decode([300, 116, 301], skipSpecial: true) == "t")
    #expect(tok.decode([302], skipSpecial: true) == "<x>")  // added, not special
    #expect(tok.decode([0xC3]) == "\u{FFFD}")  // a lone lead byte
    #expect(tok.decode([0xC3, 0xA9, 0xFF, 0x41]) == "é\u{FFFD}A")
    #expect(tok.decode([-5, 290, 305, 65, Int32.max]) == "A")  // outside the vocabulary, or a hole
    #expect(tok.tokenBytes(258) == Array(" the".utf8))
    #expect(tok.tokenBytes(300) == Array("<|im_start|>".utf8))
    #expect(tok.tokenBytes(-1) == [] && tok.tokenBytes(280) == [])
  }

  @Test func roundTripsRandomText() throws {
    let tok = try Fixture.tokenizer()
    var rng = Rng(seed: 42)
    for _ in 0..<2000 {
      let text = randomText(&rng)
      for parse in [true, false] {
        let ids = tok.encode(text, addSpecial: true, parseSpecial: parse)
        #expect(Array(tok.decode(ids).utf8) == Array(text.utf8), "\(text.debugDescription)")
      }
    }
  }

  @Test func longWordMergeMatchesReference() throws {
    // Many overlapping merges over a two-letter alphabet.
    let merges: [(String, String)] = [("a", "b"), ("b", "a"), ("a", "a"), ("ab", "a"), ("b", "b"), ("aa", "b"),
                                      ("ba", "b"), ("ab", "ab"), ("bb", "a"), ("aba", "a"), ("abab", "a")]
    let tok = try BPETokenizer(tokenizerJSON: Fixture.json(merges: merges))
    var rng = Rng(seed: 3)
    for length in [2, 3, 5, 16, 33, 64, 200, 1000] {
      for _ in 0..<40 {
        let word: [Int32] = (0..<length).map { _ in rng.below(2) == 0 ? 97 : 98 }
        var reference = word, short = word, long = word
        tok.mergeReference(&reference)
        tok.mergeShort(&short)
        tok.mergeLong(&long)
        #expect(short == reference)
        #expect(long == reference)
        #expect(tok.decode(long) == String(decoding: word.map { UInt8($0) }, as: UTF8.self))
      }
    }
    // A long word goes through encode too (no spaces: one pre-token).
    let text = String(repeating: "abbaab", count: 300)
    var reference = Array(text.utf8).map { Int32($0) }
    tok.mergeReference(&reference)
    #expect(tok.encode(text, addSpecial: false) == reference)
  }

  @Test func bytesMissingFromTheVocabulary() throws {
    // Without the symbol for 'A' (as SmolLM2 lacks a few control bytes): dropped, or the unknown token.
    let withoutA = Fixture.editingModel { m in
      m.set("vocab", .object((m["vocab"]?.objectValue ?? []).filter { $0.0 != "A" }))
    }
    let dropping = try BPETokenizer(tokenizerJSON: withoutA)
    #expect(dropping.encode("xAAy A", addSpecial: false) == Fixture.idsOf(["x", "y", "Ġ"]))
    var j = withoutA
    var model = j["model"] ?? .null
    model.set("unk_token", .string("<|endoftext|>"))
    j.set("model", model)
    #expect(try BPETokenizer(tokenizerJSON: j).encode("xAAy", addSpecial: false) == Fixture.idsOf(["x"]) + [304, 304] + Fixture.idsOf(["y"]))
    model.set("fuse_unk", .bool(true))
    j.set("model", model)
    #expect(try BPETokenizer(tokenizerJSON: j).encode("xAAy A", addSpecial: false) == Fixture.idsOf(["x"]) + [304] + Fixture.idsOf(["y", "Ġ"]) + [304])
    model.set("unk_token", .string("<nope>"))
    j.set("model", model)
    expectError(.format, mentions: ["<nope>"]) { _ = try BPETokenizer(tokenizerJSON: j) }
  }

  @Test func bosFromTemplateProcessing() throws {
    let post: JSON = .object([
      ("type", .string("TemplateProcessing")),
      ("single", .array([.object([("SpecialToken", .object([("id", .string("<|endoftext|>")), ("type_id", .int(0))]))]),
                         .object([("Sequence", .object([("id", .string("A")), ("type_id", .int(0))]))])])),
      ("special_tokens", .object([("<|endoftext|>", .object([("id", .string("<|endoftext|>")), ("ids", .array([.int(304)]))]))])),
    ])
    let tok = try BPETokenizer(tokenizerJSON: Fixture.json(extra: [("post_processor", post)]))
    #expect(tok.addBOS && tok.bosTokenId == 304)
    #expect(tok.encode("the", addSpecial: true) == [304] + Fixture.idsOf(["t", "he"]))
    #expect(tok.encode("the", addSpecial: false) == Fixture.idsOf(["t", "he"]))
    let sequence: JSON = .object([("type", .string("Sequence")),
                                  ("processors", .array([.object([("type", .string("ByteLevel"))]), post]))])
    let inSequence = try BPETokenizer(tokenizerJSON: Fixture.json(extra: [("post_processor", sequence)]))
    #expect(inSequence.addBOS && inSequence.bosTokenId == 304)
    let plain = try Fixture.tokenizer()
    #expect(!plain.addBOS && plain.bosTokenId == nil && plain.eosTokenId == nil && plain.chatTemplate == nil)
  }

  @Test func prefixSpaceAndDigits() throws {
    let pre: JSON = .object([("type", .string("Sequence")), ("pretokenizers", .array([
      .object([("type", .string("Digits")), ("individual_digits", .bool(true))]),
      .object([("type", .string("ByteLevel")), ("add_prefix_space", .bool(true))]),
    ]))])
    let tok = try BPETokenizer(tokenizerJSON: Fixture.json(preTokenizer: pre))
    #expect(tok.preTokenizer == PreTokenizer(digits: .individual, addPrefixSpace: true, useRegex: true))
    // HF adds the space to every piece left by Digits.
    #expect(tok.encode("the 12", addSpecial: false) == Fixture.idsOf(["Ġthe", "Ġ", "Ġ", "1", "Ġ", "2"]))
  }

  @Test func loadsAnHFDirectory() throws {
    let dir = "/tmp/moecore-tok-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try FileSystem.makeDirectory(dir)
    defer { FileSystem.removeTree(dir) }
    try FileSystem.writeText(Fixture.json().serialized(), to: FileSystem.join(dir, "tokenizer.json"))
    try FileSystem.writeText(#"{"bos_token_id": 304, "eos_token_id": [301, 304]}"#, to: FileSystem.join(dir, "config.json"))
    var tok = try BPETokenizer.load(directory: dir)
    #expect(tok.bosTokenId == 304 && tok.eosTokenId == 301 && !tok.addBOS && tok.chatTemplate == nil)
    unlink(FileSystem.join(dir, "tokenizer_config.json"))
    try FileSystem.writeText(#"""
      {"add_bos_token": true, "bos_token": {"content": "<|im_start|>", "special": true}, "eos_token": "<|im_end|>",
       "chat_template": "{{ messages }}"}
      """#, to: FileSystem.join(dir, "tokenizer_config.json"))
    tok = try BPETokenizer.load(directory: dir)
    #expect(tok.bosTokenId == 300 && tok.eosTokenId == 301 && tok.addBOS && tok.chatTemplate == "{{ messages }}")
    #expect(tok.encode("the", addSpecial: true) == [300] + Fixture.idsOf(["t", "he"]))
    unlink(FileSystem.join(dir, "tokenizer_config.json"))
    try FileSystem.writeText(#"{"bos_token": "<nope>"}"#, to: FileSystem.join(dir, "tokenizer_config.json"))
    expectError(.format, mentions: ["<nope>"]) { _ = try BPETokenizer.load(directory: dir) }
    expectError(.notFound, mentions: ["tokenizer.json"]) { _ = try BPETokenizer.load(directory: dir + "/missing") }
  }
}

// MARK: - Rejected input

@Suite struct TokenizerErrorTests {
  @Test func rejectsMalformedTokenizerJSON() {
    let fixture = Fixture.json()
    expectError(.format, mentions: ["vocab"]) {
      _ = try BPETokenizer(tokenizerJSON: Fixture.editingModel { $0.remove("vocab") })
    }
    expectError(.format, mentions: ["merges"]) {
      _ = try BPETokenizer(tokenizerJSON: Fixture.editingModel { $0.remove("merges") })
    }
    expectError(.format, mentions: ["model"]) {
      var j = fixture
      j.remove("model")
      _ = try BPETokenizer(tokenizerJSON: j)
    }
    func addingMerge(_ merge: JSON) -> JSON {
      Fixture.editingModel { m in m.set("merges", .array((m["merges"]?.arrayValue ?? []) + [merge])) }
    }
    expectError(.format, mentions: ["merge #23", "'zz'"]) { _ = try BPETokenizer(tokenizerJSON: addingMerge(.string("zz a"))) }
    expectError(.format, mentions: ["merge #23", "'zz'"]) { _ = try BPETokenizer(tokenizerJSON: addingMerge(.string("a zz"))) }
    // Both parts exist, their concatenation does not.
    expectError(.format, mentions: ["merge #23", "'xq'"]) { _ = try BPETokenizer(tokenizerJSON: addingMerge(.string("x q"))) }
    for bad: JSON in [.string("ab"), .string("a b c"), .string(" a"), .array([.string("a")]), .int(3)] {
      expectError(.format, mentions: ["merge #23"]) { _ = try BPETokenizer(tokenizerJSON: addingMerge(bad)) }
    }
    for badId: JSON in [.int(-1), .int(1 << 30), .float(2.5), .string("7")] {
      expectError(.format, mentions: ["zzz"]) {
        _ = try BPETokenizer(tokenizerJSON: Fixture.editingModel { m in
          m.set("vocab", .object((m["vocab"]?.objectValue ?? []) + [("zzz", badId)]))
        })
      }
    }
    expectError(.format, mentions: ["id 65"]) {  // two tokens, one id
      _ = try BPETokenizer(tokenizerJSON: Fixture.editingModel { m in
        m.set("vocab", .object((m["vocab"]?.objectValue ?? []) + [("zzz", .int(65))]))
      })
    }
    expectError(.format, mentions: ["added token #0"]) {
      var j = fixture
      j.set("added_tokens", .array([.object([("content", .string("<a>"))])]))
      _ = try BPETokenizer(tokenizerJSON: j)
    }
    expectError(.format, mentions: ["<a>", "-3"]) {
      var j = fixture
      j.set("added_tokens", .array([.object([("id", .int(-3)), ("content", .string("<a>"))])]))
      _ = try BPETokenizer(tokenizerJSON: j)
    }
    expectError(.format) { _ = try BPETokenizer(tokenizerJSON: .array([])) }
  }

  @Test func rejectsWhatItCannotReproduce() {
    expectError(.unsupported, mentions: ["Unigram"]) {
      _ = try BPETokenizer(tokenizerJSON: Fixture.editingModel { $0.set("type", .string("Unigram")) })
    }
    expectError(.unsupported, mentions: ["Metaspace"]) {
      _ = try BPETokenizer(tokenizerJSON: Fixture.json(preTokenizer: .object([("type", .string("Metaspace"))])))
    }
    expectError(.unsupported, mentions: ["Split"]) {
      let pre: JSON = .object([("type", .string("Sequence")), ("pretokenizers", .array([
        .object([("type", .string("Split"))]), .object([("type", .string("ByteLevel"))]),
      ]))])
      _ = try BPETokenizer(tokenizerJSON: Fixture.json(preTokenizer: pre))
    }
    expectError(.unsupported, mentions: ["pre_tokenizer"]) {
      _ = try BPETokenizer(tokenizerJSON: Fixture.json(preTokenizer: .null))
    }
    expectError(.unsupported, mentions: ["NFC"]) {
      _ = try BPETokenizer(tokenizerJSON: Fixture.json(extra: [("normalizer", .object([("type", .string("NFC"))]))]))
    }
    expectError(.unsupported, mentions: ["continuing_subword_prefix"]) {
      _ = try BPETokenizer(tokenizerJSON: Fixture.editingModel { $0.set("continuing_subword_prefix", .string("##")) })
    }
  }
}

// MARK: - GGUF metadata

/// Writes a GGUF v3 file holding only metadata.
private func writeGGUF(_ entries: [(String, GGUFValue)], to path: String) throws {
  try writeGGUFFile(path, metadata: entries)
}

/// GGUF tokenizer metadata for the fixture vocabulary (ids as in `Fixture`).
private func fixtureGGUFEntries() -> [(String, GGUFValue)] {
  var tokens = Fixture.byteSymbols
  for (a, b) in Fixture.merges { tokens.append(a + b) }
  var types = [Int64](repeating: 1, count: tokens.count)
  while tokens.count < 300 { tokens.append("[UNUSED_\(tokens.count)]"); types.append(5) }
  for (_, content, special) in Fixture.added { tokens.append(content); types.append(special ? 3 : 4) }
  return [
    ("general.architecture", .string("llama")),
    ("tokenizer.ggml.model", .string("gpt2")),
    ("tokenizer.ggml.pre", .string("smollm")),
    ("tokenizer.ggml.tokens", .array(tokens.map { .string($0) })),
    ("tokenizer.ggml.token_type", .array(types.map { .int($0) })),
    ("tokenizer.ggml.merges", .array(Fixture.merges.map { .string("\($0.0) \($0.1)") })),
    ("tokenizer.ggml.bos_token_id", .uint(300)),
    ("tokenizer.ggml.eos_token_id", .uint(301)),
    ("tokenizer.ggml.add_bos_token", .bool(true)),
    ("tokenizer.chat_template", .string("{{ x }}")),
  ]
}

@Suite struct TokenizerGGUFTests {
  static func withGGUF(_ entries: [(String, GGUFValue)], _ body: (GGUFFile) throws -> Void) throws {
    let path = "/tmp/moecore-tok-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).gguf"
    try writeGGUF(entries, to: path)
    defer { unlink(path) }
    try body(try GGUFFile(path: path))
  }

  static func replacing(_ key: String, with value: GGUFValue?) -> [(String, GGUFValue)] {
    var e = fixtureGGUFEntries().filter { $0.0 != key }
    if let value { e.append((key, value)) }
    return e
  }

  @Test func readsMetadata() throws {
    try Self.withGGUF(fixtureGGUFEntries()) { g in
      let tok = try BPETokenizer(gguf: g)
      #expect(tok.vocabSize == 305)
      #expect(tok.bosTokenId == 300 && tok.eosTokenId == 301 && tok.addBOS && tok.chatTemplate == "{{ x }}")
      #expect(tok.preTokenizer.digits == .individual)
      #expect(tok.encode("the 12<|im_end|>", addSpecial: true)
              == [300] + Fixture.idsOf(["t", "he", "Ġ", "1", "2"]) + [301])
      #expect(tok.isSpecial(301) && !tok.isSpecial(302))
      #expect(tok.encode("<x>", addSpecial: false, parseSpecial: false) == [302])
      // The exporter's tokenizer.json encodes the same.
      let json = try TokenizerExport.build(from: g, maxLength: 64).tokenizerJSON
      let fromJSON = try BPETokenizer(tokenizerJSON: json)
      var rng = Rng(seed: 11)
      for _ in 0..<300 {
        let text = randomText(&rng)
        #expect(fromJSON.encode(text, addSpecial: false) == tok.encode(text, addSpecial: false), "\(text.debugDescription)")
      }
    }
  }

  @Test func rejectsBadMetadata() throws {
    try Self.withGGUF(Self.replacing("tokenizer.ggml.model", with: .string("llama"))) { g in
      expectError(.unsupported, mentions: ["llama"]) { _ = try BPETokenizer(gguf: g) }
    }
    try Self.withGGUF(Self.replacing("tokenizer.ggml.pre", with: .string("qwen2"))) { g in
      expectError(.unsupported, mentions: ["qwen2"]) { _ = try BPETokenizer(gguf: g) }
    }
    try Self.withGGUF(Self.replacing("tokenizer.ggml.tokens", with: nil)) { g in
      expectError(.format, mentions: ["tokenizer.ggml.tokens"]) { _ = try BPETokenizer(gguf: g) }
    }
    try Self.withGGUF(Self.replacing("tokenizer.ggml.merges", with: .array([.string("Ġ t"), .string("q zz")]))) { g in
      expectError(.format, mentions: ["zz"]) { _ = try BPETokenizer(gguf: g) }
    }
    try Self.withGGUF(Self.replacing("tokenizer.ggml.bos_token_id", with: .uint(305))) { g in
      expectError(.format, mentions: ["305"]) { _ = try BPETokenizer(gguf: g) }
    }
    try Self.withGGUF(Self.replacing("tokenizer.ggml.token_type", with: .array([.int(1)]))) { g in
      expectError(.format, mentions: ["token_type"]) { _ = try BPETokenizer(gguf: g) }
    }
    try Self.withGGUF(Self.replacing("tokenizer.ggml.model", with: nil)) { g in
      expectError(.notFound, mentions: ["tokenizer.ggml.model"]) { _ = try BPETokenizer(gguf: g) }
    }
  }
}

// MARK: - The real SmolLM2 vocabulary

private let packageRoot: String = {
  // #filePath is <root>/Tests/MoECoreTests/TokenizerTests.swift.
  var path = #filePath
  for _ in 0..<3 { path = FileSystem.parent(of: path) }
  return path
}()

private let smolLMPath = FileSystem.join(packageRoot, ".cache/materials/SmolLM2-135M-Instruct.Q4_1.gguf")

/// SmolLM2's tokenizer, read once for all tests (a failure to read it fails them).
private let smolLM = Result { try BPETokenizer(gguf: GGUFFile(path: smolLMPath)) }

private let english = """
  It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, \
  it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of \
  Darkness, it was the spring of hope, it was the winter of despair, we had everything before us, we had nothing \
  before us, we were all going direct to Heaven, we were all going direct the other way – in short, the period was \
  so far like the present period, that some of its noisiest authorities insisted on its being received, for good or \
  for evil, in the superlative degree of comparison only.

  There were a king with a large jaw and a queen with a plain face, on the throne of England; there were a king with \
  a large jaw and a queen with a fair face, on the throne of France. In both countries it was clearer than crystal to \
  the lords of the State preserves of loaves and fishes, that things in general were settled for ever.

  It was the year of Our Lord one thousand seven hundred and seventy-five (1775). Spiritual revelations were conceded \
  to England at that favoured period, as at this. Mrs. Southcott had recently attained her five-and-twentieth blessed \
  birthday, of whom a prophetic private in the Life Guards had heralded the sublime appearance by announcing that \
  arrangements were made for the swallowing up of London and Westminster. Even the Cock-lane ghost had been laid only \
  a round dozen of years, after rapping out its messages, as the spirits of this very year last past (supernaturally \
  deficient in originality) rapped out theirs. Mere messages in the earthly order of events had lately come to the \
  English Crown and People, from a congress of British subjects in America: which, strange to relate, have proved \
  more important to the human race than any communications yet received through any of the chickens of the Cock-lane \
  brood. "Don't you think so?" she'd asked; "I'm sure we'll see," he'd said — naïve café owners in São Paulo agreed.
  \tIndented\tline,   many    spaces,\r\nWindows line, emoji 😀👍🏽, 日本語のテキスト, Ελληνικά, русский текст. 3.14159 + 2e10 = ?

  """

@Suite(.enabled(if: FileSystem.isRegularFile(smolLMPath), "needs .cache/materials/SmolLM2-135M-Instruct.Q4_1.gguf"))
struct TokenizerSmolLM2Tests {
  @Test func knownIds() throws {
    let tok = try smolLM.get()
    #expect(tok.vocabSize == 49152)
    #expect(tok.encode("The capital of France is", addSpecial: true) == [504, 3575, 282, 4649, 314])
    #expect(tok.encode(" Paris", addSpecial: false) == [7042])
    #expect(tok.bosTokenId == 1 && tok.eosTokenId == 2 && !tok.addBOS)
    #expect(tok.chatTemplate?.contains("<|im_start|>") == true)
    #expect(tok.decode([504, 3575, 282, 4649, 314, 7042]) == "The capital of France is Paris")
  }

  @Test func chatMarkersAreSingleTokens() throws {
    let tok = try smolLM.get()
    let start = try #require(tok.id(of: "<|im_start|>"))
    let end = try #require(tok.id(of: "<|im_end|>"))
    #expect(tok.isSpecial(start) && tok.isSpecial(end))
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>", addSpecial: false)
    #expect(ids.first == start && ids.last == end)
    #expect(ids.filter { $0 == start || $0 == end }.count == 2)
    #expect(tok.decode(ids) == "<|im_start|>user\nHi<|im_end|>")
    #expect(tok.decode(ids, skipSpecial: true) == "user\nHi")
    let plain = tok.encode("<|im_start|>user", addSpecial: false, parseSpecial: false)
    #expect(!plain.contains(start) && plain.count > 2)
  }

  @Test func englishRoundTrips() throws {
    let tok = try smolLM.get()
    let ids = tok.encode(english, addSpecial: false)
    #expect(ids.count > 300 && ids.count < english.utf8.count / 2)
    #expect(Array(tok.decode(ids).utf8) == Array(english.utf8))
    // Digits are split one by one (tokenizer.ggml.pre = smollm).
    let digits = tok.encode("1775", addSpecial: false)
    #expect(digits.count == 4 && tok.decode(digits) == "1775")
  }

  /// Opt-in cross-check against ids from HF `tokenizers`: set
  /// MOE_TOKENIZER_CROSSCHECK to a JSON file [{"text": ..., "ids": [...]}, ...].
  @Test(.enabled(if: getenv("MOE_TOKENIZER_CROSSCHECK") != nil))
  func matchesReferenceIds() throws {
    let tok = try smolLM.get()
    let path = String(cString: try #require(getenv("MOE_TOKENIZER_CROSSCHECK")))
    let cases = try #require(try JSONParser.parse(try FileSystem.readAll(path), what: path).arrayValue)
    var mismatches = 0
    for c in cases {
      let text = try #require(c["text"]?.stringValue)
      let expected = (c["ids"]?.arrayValue ?? []).map { Int32($0.intValue ?? -1) }
      let ids = tok.encode(text, addSpecial: false)
      if ids != expected {
        mismatches += 1
        if mismatches <= 10 { Issue.record("\(text.prefix(200).debugDescription): got \(ids.prefix(40)), expected \(expected.prefix(40))") }
      }
    }
    #expect(mismatches == 0, "\(mismatches) of \(cases.count) texts differ")
  }
}
