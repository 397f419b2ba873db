// GPT-2 style byte-level BPE tokenizer, built from an HF tokenizer.json or
// from GGUF tokenizer metadata (tokenizer.ggml.model = "gpt2").
//
// Encoding: added/special tokens are cut out literally (longest first), the
// rest is pre-tokenized (PreTokenizer.swift), each word's UTF-8 bytes become
// byte-level symbols, and adjacent symbols are merged lowest merge rank first,
// leftmost first (the order of HF tokenizers and llama.cpp).

import MoESupport

/// A byte-level BPE tokenizer. Immutable once built: one instance may be used
/// from several threads at once.
public final class BPETokenizer: Sendable {
  // MARK: Stored state

  /// Result of merging a pair: its rank in the merge list and the merged token.
  package struct Merge: Sendable {
    package var rank: Int32
    package var id: Int32
  }

  /// A token matched literally in text before pre-tokenization.
  package struct AddedToken: Sendable {
    package var id: Int32
    package var content: [UInt8]
    package var special: Bool
    /// HF `lstrip` / `rstrip`: the match also swallows whitespace on that side.
    package var lstrip: Bool
    package var rstrip: Bool
  }

  /// Token UTF-8 (vocabulary form: byte-level for ordinary tokens, literal text
  /// for added tokens) to id.
  let idOfToken: [[UInt8]: Int32]
  /// The same for the BPE model's own vocabulary only (what bytes, merges and
  /// `ignore_merges` look up; added tokens are matched before BPE).
  let idOfModelToken: [[UInt8]: Int32]
  /// Merges keyed by `pairKey(left, right)`.
  package let merges: [UInt64: Merge]
  /// Token of each single byte, -1 where the vocabulary lacks one: [256].
  package let idOfByte: [Int32]
  /// Stands for a byte the vocabulary lacks (HF `unk_token`); without it such bytes are dropped, as HF does.
  let unknownId: Int32?
  /// HF `fuse_unk`: consecutive unknown bytes give one unknown token.
  let fuseUnknown: Bool
  /// Control/special flag of each id: [vocabSize].
  let specialFlags: [Bool]
  /// Raw bytes of every id, concatenated; `byteOffsets[id]..<byteOffsets[id + 1]`: [vocabSize + 1].
  let tokenByteStorage: [UInt8]
  let byteOffsets: [Int]
  /// Added tokens by their first byte, longest first: [256][...].
  let addedByFirstByte: [[AddedToken]]
  package let preTokenizer: PreTokenizer
  /// HF `ignore_merges`: a word that is itself in the vocabulary is not merged.
  let ignoreMerges: Bool

  public let bosTokenId: Int32?
  public let eosTokenId: Int32?
  /// Whether `encode(_:addSpecial: true)` prepends BOS.
  public let addBOS: Bool
  public let chatTemplate: String?

  /// Number of id slots (highest id + 1).
  public var vocabSize: Int { specialFlags.count }
  /// Whether the pre-tokenizer isolates digits before the GPT-2 split (SmolLM's).
  var splitsDigits: Bool { preTokenizer.digits != .none }

  /// Largest id accepted from a file.
  static let idLimit = 1 << 24

  static func pairKey(_ left: Int32, _ right: Int32) -> UInt64 {
    UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
  }

  // MARK: Building

  /// A special token named by id or by text, resolved against the vocabulary.
  package enum TokenRef: Equatable {
    case id(Int)
    case text(String)
  }

  /// Everything read from a file, before validation and indexing.
  package struct Spec {
    /// Names the source in error messages ("'path'").
    package var what: String
    /// Vocabulary (token in byte-level form, id).
    package var vocab: [(String, Int)] = []
    package var merges: [(String, String)] = []
    package var added: [(id: Int, content: String, special: Bool, lstrip: Bool, rstrip: Bool)] = []
    package var preTokenizer = PreTokenizer.gpt2
    var ignoreMerges = false
    package var unknown: TokenRef?
    var fuseUnknown = false
    var bos: TokenRef?
    package var eos: TokenRef?
    package var addBOS = false
    package var chatTemplate: String?
  }

  package init(spec: Spec) throws {
    let what = spec.what
    // Id slots.
    var slotCount = 0
    for (token, id) in spec.vocab {
      guard id >= 0 && id < BPETokenizer.idLimit else {
        throw MoEError.format("\(what): vocab token '\(token)' has id \(id), out of range 0..<\(BPETokenizer.idLimit)")
      }
      slotCount = max(slotCount, id + 1)
    }
    for t in spec.added {
      guard t.id >= 0 && t.id < BPETokenizer.idLimit else {
        throw MoEError.format("\(what): added token '\(t.content)' has id \(t.id), out of range 0..<\(BPETokenizer.idLimit)")
      }
      slotCount = max(slotCount, t.id + 1)
    }
    guard slotCount > 0 else { throw MoEError.format("\(what): the vocabulary is empty") }

    // Vocabulary: id -> text, text -> id.
    var textOfId = [String?](repeating: nil, count: slotCount)
    var idOfModelToken: [[UInt8]: Int32] = [:]
    idOfModelToken.reserveCapacity(spec.vocab.count)
    for (token, id) in spec.vocab {
      if let existing = textOfId[id], !existing.utf8.elementsEqual(token.utf8) {
        throw MoEError.format("\(what): vocab gives id \(id) to both '\(existing)' and '\(token)'")
      }
      textOfId[id] = token
      idOfModelToken[Array(token.utf8)] = Int32(id)
    }
    var idOfToken = idOfModelToken
    var specialFlags = [Bool](repeating: false, count: slotCount)
    var isAdded = [Bool](repeating: false, count: slotCount)
    var addedTokens: [AddedToken] = []
    for t in spec.added {
      textOfId[t.id] = t.content
      idOfToken[Array(t.content.utf8)] = Int32(t.id)
      specialFlags[t.id] = t.special
      isAdded[t.id] = true
      if !t.content.isEmpty {
        addedTokens.append(AddedToken(id: Int32(t.id), content: Array(t.content.utf8), special: t.special,
                                      lstrip: t.lstrip, rstrip: t.rstrip))
      }
    }

    // Single bytes (real vocabularies may lack a few control bytes).
    var idOfByte = [Int32](repeating: -1, count: 256)
    for b in 0..<256 {
      if let id = idOfModelToken[ByteLevel.utf8OfByte[b]] { idOfByte[b] = id }
    }

    // Merges: rank = position in the list; the first occurrence of a pair wins.
    var merges: [UInt64: Merge] = [:]
    merges.reserveCapacity(spec.merges.count)
    for (rank, (left, right)) in spec.merges.enumerated() {
      let leftUTF8 = Array(left.utf8)
      let rightUTF8 = Array(right.utf8)
      guard let leftId = idOfModelToken[leftUTF8] else {
        throw MoEError.format("\(what): merge #\(rank) '\(left) \(right)' names '\(left)', which is not in the vocabulary")
      }
      guard let rightId = idOfModelToken[rightUTF8] else {
        throw MoEError.format("\(what): merge #\(rank) '\(left) \(right)' names '\(right)', which is not in the vocabulary")
      }
      guard let mergedId = idOfModelToken[leftUTF8 + rightUTF8] else {
        throw MoEError.format("\(what): merge #\(rank) '\(left) \(right)' gives '\(left)\(right)', which is not in the vocabulary")
      }
      guard rank < Int(Int32.max) else { throw MoEError.format("\(what): too many merges") }
      let key = BPETokenizer.pairKey(leftId, rightId)
      if merges[key] == nil { merges[key] = Merge(rank: Int32(rank), id: mergedId) }
    }

    // Bytes of each id: added tokens are literal text, the rest byte-level.
    var storage: [UInt8] = []
    var offsets = [Int](repeating: 0, count: slotCount + 1)
    for id in 0..<slotCount {
      if let text = textOfId[id] {
        if !isAdded[id], let raw = ByteLevel.decoded(text) {
          storage.append(contentsOf: raw)
        } else {
          storage.append(contentsOf: text.utf8)
        }
      }
      offsets[id + 1] = storage.count
    }

    // Added tokens by first byte, longest first (ties: lower id first).
    var byFirst = [[AddedToken]](repeating: [], count: 256)
    for t in addedTokens { byFirst[Int(t.content[0])].append(t) }
    for b in 0..<256 where byFirst[b].count > 1 {
      byFirst[b].sort { $0.content.count != $1.content.count ? $0.content.count > $1.content.count : $0.id < $1.id }
    }

    func resolve(_ ref: TokenRef?, _ name: String) throws -> Int32? {
      switch ref {
      case nil: return nil
      case let .id(id)?:
        guard id >= 0 && id < slotCount else {
          throw MoEError.format("\(what): \(name) id \(id) is out of range 0..<\(slotCount)")
        }
        return Int32(id)
      case let .text(text)?:
        guard let id = idOfToken[Array(text.utf8)] else {
          throw MoEError.format("\(what): \(name) '\(text)' is not in the vocabulary")
        }
        return id
      }
    }

    self.idOfToken = idOfToken
    self.idOfModelToken = idOfModelToken
    self.merges = merges
    self.idOfByte = idOfByte
    self.specialFlags = specialFlags
    self.tokenByteStorage = storage
    self.byteOffsets = offsets
    self.addedByFirstByte = byFirst
    self.preTokenizer = spec.preTokenizer
    self.ignoreMerges = spec.ignoreMerges
    self.unknownId = try resolve(spec.unknown, "unk token")
    self.fuseUnknown = spec.fuseUnknown
    self.bosTokenId = try resolve(spec.bos, "bos token")
    self.eosTokenId = try resolve(spec.eos, "eos token")
    self.addBOS = spec.addBOS
    self.chatTemplate = spec.chatTemplate
    if addBOS && bosTokenId == nil {
      throw MoEError.format("\(what): BOS is to be added but no BOS token is defined")
    }
  }

  /// From an HF tokenizer.json (model.type "BPE", byte-level pre-tokenizer and
  /// decoder; vocab, merges as "a b" strings or [a, b] pairs, added_tokens with
  /// special flags, ignore_merges if present). BOS comes from a
  /// TemplateProcessing post-processor if there is one; EOS and the chat
  /// template live in other files (see `load(checkpoint:)`).
  public convenience init(tokenizerJSON: JSON) throws {
    try self.init(spec: try Spec(tokenizerJSON: tokenizerJSON, what: "tokenizer.json"))
  }

  /// From GGUF metadata (tokenizer.ggml.model must be "gpt2"; tokens, merges,
  /// token_type: 3 = control/special, 4 = user-defined, both matched literally).
  public convenience init(gguf: GGUFFile) throws {
    try self.init(spec: try Spec(gguf: gguf))
  }

  /// For a checkpoint: tokenizer.json in the HF directory (with
  /// tokenizer_config.json for bos/eos/add_bos/chat template if present, and
  /// config.json's bos/eos ids as a fallback), or the GGUF metadata.
  public static func load(checkpoint: Checkpoint) throws -> BPETokenizer {
    switch checkpoint.container {
    case .gguf:
      guard let g = checkpoint.gguf else {
        throw MoEError.notFound("'\(checkpoint.path)': GGUF checkpoint without its file")
      }
      return try BPETokenizer(gguf: g)
    case .safetensors:
      return try load(directory: checkpoint.directory ?? checkpoint.path)
    }
  }

  /// From an HF model directory (see `load(checkpoint:)`).
  package static func load(directory: String) throws -> BPETokenizer {
    let path = FileSystem.join(directory, "tokenizer.json")
    guard FileSystem.isRegularFile(path) else {
      throw MoEError.notFound("'\(directory)' has no tokenizer.json")
    }
    let json = try JSONParser.parse(try FileSystem.readAll(path), what: "'\(path)'")
    var spec = try Spec(tokenizerJSON: json, what: "'\(path)'")
    try spec.applyTokenizerConfig(directory: directory)
    return try BPETokenizer(spec: spec)
  }

  // MARK: Queries

  /// Whether `id` is a control/special token (dropped by `decode(skipSpecial: true)`).
  public func isSpecial(_ id: Int32) -> Bool {
    id >= 0 && Int(id) < specialFlags.count && specialFlags[Int(id)]
  }

  /// Id of a token given in vocabulary form ("Ġthe", "<|im_start|>"), or nil.
  public func id(of token: String) -> Int32? {
    idOfToken[Array(token.utf8)]
  }

  /// Bytes of one token (byte-level decoded; added/special tokens give their
  /// text); empty for ids outside the vocabulary.
  public func tokenBytes(_ id: Int32) -> [UInt8] {
    guard id >= 0 && Int(id) < specialFlags.count else { return [] }
    return Array(tokenByteStorage[byteOffsets[Int(id)]..<byteOffsets[Int(id) + 1]])
  }

  /// Text of `ids` (invalid UTF-8 replaced with U+FFFD; ids outside the
  /// vocabulary ignored); `skipSpecial` drops control/special tokens.
  public func decode(_ ids: [Int32], skipSpecial: Bool = false) -> String {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(ids.count * 4)
    tokenByteStorage.withUnsafeBufferPointer { storage in
      for id in ids {
        guard id >= 0 && Int(id) < specialFlags.count else { continue }
        let i = Int(id)
        if skipSpecial && specialFlags[i] { continue }
        bytes.append(contentsOf: UnsafeBufferPointer(rebasing: storage[byteOffsets[i]..<byteOffsets[i + 1]]))
      }
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  // MARK: Encoding

  /// Ids of `text`. With `addSpecial`, BOS is prepended when `addBOS` is set.
  /// With `parseSpecial`, special tokens written in the text become their ids;
  /// without it only non-special added tokens do, and special ones are
  /// tokenized as ordinary text.
  public func encode(_ text: String, addSpecial: Bool, parseSpecial: Bool = true) -> [Int32] {
    var ids: [Int32] = []
    if addSpecial && addBOS, let bos = bosTokenId { ids.append(bos) }
    let utf8 = Array(text.utf8)
    ids.reserveCapacity(utf8.count / 3 + 2)
    var state = EncodeState()
    var scratch = PreTokenizer.Scratch()
    utf8.withUnsafeBufferPointer { text in
      var segmentStart = 0
      var i = 0
      while i < text.count {
        guard let match = matchAdded(text, at: i, parseSpecial: parseSpecial) else { i += 1; continue }
        var segmentEnd = i
        if match.lstrip {
          while segmentEnd > segmentStart, let w = BPETokenizer.whitespaceBefore(text, segmentEnd, floor: segmentStart) {
            segmentEnd = w
          }
        }
        encodeSegment(text, segmentStart..<segmentEnd, &scratch, &state, into: &ids)
        ids.append(match.id)
        i += match.content.count
        if match.rstrip {
          while let w = BPETokenizer.whitespaceAfter(text, i) { i = w }
        }
        segmentStart = i
      }
      encodeSegment(text, segmentStart..<text.count, &scratch, &state, into: &ids)
    }
    return ids
  }

  /// Per-call caches and buffers.
  package struct EncodeState {
    /// Word bytes to ids, so repeated words are merged once.
    package var cache: [[UInt8]: [Int32]] = [:]
    var symbols: [Int32] = []
  }

  /// The longest added token starting at byte `i`, if any.
  private func matchAdded(_ text: UnsafeBufferPointer<UInt8>, at i: Int, parseSpecial: Bool) -> AddedToken? {
    let candidates = addedByFirstByte[Int(text[i])]
    for t in candidates where parseSpecial || !t.special {
      let n = t.content.count
      guard i + n <= text.count else { continue }
      var equal = true
      for j in 1..<n where text[i + j] != t.content[j] { equal = false; break }
      if equal { return t }
    }
    return nil
  }

  /// Start of the whitespace scalar ending at byte `end`, if there is one at or after `floor`.
  static func whitespaceBefore(_ text: UnsafeBufferPointer<UInt8>, _ end: Int, floor: Int) -> Int? {
    var start = end - 1
    while start > floor && text[start] & 0xC0 == 0x80 { start -= 1 }
    guard start >= floor, let s = scalar(text, start..<end), s.properties.isWhitespace else { return nil }
    return start
  }

  /// End of the whitespace scalar starting at byte `start`, if there is one.
  static func whitespaceAfter(_ text: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int? {
    guard start < text.count else { return nil }
    let lead = text[start]
    let n = lead < 0x80 ? 1 : lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2
    guard start + n <= text.count, let s = scalar(text, start..<(start + n)), s.properties.isWhitespace else { return nil }
    return start + n
  }

  private static func scalar(_ text: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Unicode.Scalar? {
    var decoder = UTF8()
    var iterator = UnsafeBufferPointer(rebasing: text[range]).makeIterator()
    if case let .scalarValue(s) = decoder.decode(&iterator) { return s }
    return nil
  }

  /// Pre-tokenizes and merges `text[range]` (text between added tokens).
  private func encodeSegment(_ text: UnsafeBufferPointer<UInt8>, _ range: Range<Int>,
                             _ scratch: inout PreTokenizer.Scratch, _ state: inout EncodeState,
                             into ids: inout [Int32]) {
    guard !range.isEmpty else { return }
    if !preTokenizer.addPrefixSpace {
      preTokenizer.split(text, range, scratch: &scratch) { word in
        encodeWord(text, word, &state, into: &ids)
      }
      return
    }
    // HF ByteLevel add_prefix_space: every piece (after digit isolation) gets a
    // leading ' ' unless it has one, then goes through the regex.
    var plain = preTokenizer
    plain.digits = .none
    plain.addPrefixSpace = false
    for piece in preTokenizer.pieces(text, range, scratch: &scratch) {
      var bytes = Array(UnsafeBufferPointer(rebasing: text[piece]))
      if bytes.first != 0x20 { bytes.insert(0x20, at: 0) }
      bytes.withUnsafeBufferPointer { pieceText in
        plain.split(pieceText, 0..<pieceText.count, scratch: &scratch) { word in
          encodeWord(pieceText, word, &state, into: &ids)
        }
      }
    }
  }

  /// Ids of one pre-token (cached per call).
  private func encodeWord(_ text: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ state: inout EncodeState,
                          into ids: inout [Int32]) {
    if range.count == 1, case let id = idOfByte[Int(text[range.lowerBound])], id >= 0 { ids.append(id); return }
    let key = Array(UnsafeBufferPointer(rebasing: text[range]))
    if let cached = state.cache[key] { ids.append(contentsOf: cached); return }
    let start = ids.count
    if ignoreMerges, let whole = idOfModelToken[ByteLevel.encodedUTF8(key)] {
      ids.append(whole)
    } else {
      state.symbols.removeAll(keepingCapacity: true)
      var previousUnknown = false
      for b in key {
        let id = idOfByte[Int(b)]
        if id >= 0 {
          state.symbols.append(id)
          previousUnknown = false
        } else if let unknownId, !(fuseUnknown && previousUnknown) {
          state.symbols.append(unknownId)
          previousUnknown = true
        }
      }
      if state.symbols.count <= 32 {
        mergeShort(&state.symbols)
      } else {
        mergeLong(&state.symbols)
      }
      ids.append(contentsOf: state.symbols)
    }
    state.cache[key] = Array(ids[start...])
  }

  // MARK: Merging

  /// Rank of merging `left` and `right`, or Int32.max.
  @inline(__always)
  private func rank(_ left: Int32, _ right: Int32) -> Merge {
    merges[BPETokenizer.pairKey(left, right)] ?? Merge(rank: .max, id: -1)
  }

  /// Plain reference merge: repeatedly merge the lowest-ranked adjacent pair
  /// (leftmost on ties). O(n^2) per word; used by tests as the reference.
  package func mergeReference(_ symbols: inout [Int32]) {
    while symbols.count > 1 {
      var best = Merge(rank: .max, id: -1)
      var bestAt = -1
      for i in 0..<(symbols.count - 1) {
        let m = rank(symbols[i], symbols[i + 1])
        if m.rank < best.rank { best = m; bestAt = i }
      }
      guard bestAt >= 0 else { return }
      symbols[bestAt] = best.id
      symbols.remove(at: bestAt + 1)
    }
  }

  /// Same order as `mergeReference`, remembering each pair's rank so a merge
  /// only looks up its two new pairs. For short words.
  package func mergeShort(_ symbols: inout [Int32]) {
    guard symbols.count > 1 else { return }
    // pairs[i]: merge of symbols[i] and symbols[i + 1]: [symbols - 1].
    var pairs: [Merge] = []
    pairs.reserveCapacity(symbols.count - 1)
    for i in 0..<(symbols.count - 1) { pairs.append(rank(symbols[i], symbols[i + 1])) }
    while !pairs.isEmpty {
      var bestAt = 0
      for i in 1..<pairs.count where pairs[i].rank < pairs[bestAt].rank { bestAt = i }
      guard pairs[bestAt].rank != .max else { return }
      symbols[bestAt] = pairs[bestAt].id
      symbols.remove(at: bestAt + 1)
      pairs.remove(at: bestAt)
      if bestAt > 0 { pairs[bestAt - 1] = rank(symbols[bestAt - 1], symbols[bestAt]) }
      if bestAt < pairs.count { pairs[bestAt] = rank(symbols[bestAt], symbols[bestAt + 1]) }
    }
  }

  /// Same order as `mergeReference` with a binary heap of candidate pairs over
  /// a linked list of symbols: O(n log n). For long words (long runs of
  /// letters without spaces, long punctuation or whitespace runs).
  package func mergeLong(_ symbols: inout [Int32]) {
    let n = symbols.count
    guard n > 1 else { return }
    // Linked list over positions; a merged-away position gets `alive` false.
    var next = [Int](0..<n).map { $0 + 1 }  // n = none
    var prev = [Int](0..<n).map { $0 - 1 }  // -1 = none
    var alive = [Bool](repeating: true, count: n)
    var heap = PairHeap()
    for i in 0..<(n - 1) {
      let m = rank(symbols[i], symbols[i + 1])
      if m.rank != .max { heap.push(.init(rank: m.rank, position: i, left: symbols[i], right: symbols[i + 1], merged: m.id)) }
    }
    while let top = heap.pop() {
      let i = top.position
      let j = next[i]
      // Stale entries: a side was merged since the pair was queued.
      guard alive[i], j < n, symbols[i] == top.left, symbols[j] == top.right else { continue }
      symbols[i] = top.merged
      alive[j] = false
      next[i] = next[j]
      if next[j] < n { prev[next[j]] = i }
      if prev[i] >= 0 {
        let p = prev[i]
        let m = rank(symbols[p], symbols[i])
        if m.rank != .max { heap.push(.init(rank: m.rank, position: p, left: symbols[p], right: symbols[i], merged: m.id)) }
      }
      if next[i] < n {
        let q = next[i]
        let m = rank(symbols[i], symbols[q])
        if m.rank != .max { heap.push(.init(rank: m.rank, position: i, left: symbols[i], right: symbols[q], merged: m.id)) }
      }
    }
    var out: [Int32] = []
    out.reserveCapacity(n)
    var i = 0
    while i < n { out.append(symbols[i]); i = next[i] }
    symbols = out
  }
}

/// Min-heap of candidate merges ordered by (rank, position).
package struct PairHeap {
  package struct Entry {
    package var rank: Int32
    package var position: Int
    package var left: Int32
    var right: Int32
    var merged: Int32

    func precedes(_ other: Entry) -> Bool {
      rank != other.rank ? rank < other.rank : position < other.position
    }
  }

  private var items: [Entry] = []

  mutating func push(_ e: Entry) {
    items.append(e)
    var child = items.count - 1
    while child > 0 {
      let parent = (child - 1) / 2
      guard items[child].precedes(items[parent]) else { break }
      items.swapAt(child, parent)
      child = parent
    }
  }

  mutating func pop() -> Entry? {
    guard let last = items.popLast() else { return nil }
    guard !items.isEmpty else { return last }
    let top = items[0]
    items[0] = last
    var parent = 0
    while true {
      let left = 2 * parent + 1
      guard left < items.count else { break }
      var smallest = left
      if left + 1 < items.count && items[left + 1].precedes(items[left]) { smallest = left + 1 }
      guard items[smallest].precedes(items[parent]) else { break }
      items.swapAt(parent, smallest)
      parent = smallest
    }
    return top
  }
}

// MARK: - Reading tokenizer files

extension BPETokenizer.Spec {
  /// From an HF tokenizer.json.
  package init(tokenizerJSON json: JSON, what: String) throws {
    self.init(what: what)
    guard json.objectValue != nil else { throw MoEError.format("\(what): not a JSON object") }
    guard let model = json["model"], model.objectValue != nil else {
      throw MoEError.format("\(what): no 'model' object")
    }
    if let type = model["type"], !type.isNull {
      guard let name = type.stringValue else { throw MoEError.format("\(what): model.type is not a string") }
      guard name == "BPE" else {
        throw MoEError.unsupported("\(what): model type '\(name)' is not supported (only byte-level 'BPE')")
      }
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
      if let v = model[key], !v.isNull, v.stringValue != "" {
        throw MoEError.unsupported("\(what): model.\(key) is not supported by byte-level BPE")
      }
    }

    guard let vocab = model["vocab"] else { throw MoEError.format("\(what): no model.vocab") }
    guard let entries = vocab.objectValue else { throw MoEError.format("\(what): model.vocab is not an object") }
    self.vocab.reserveCapacity(entries.count)
    for (token, value) in entries {
      guard let id = value.intValue else {
        throw MoEError.format("\(what): vocab token '\(token)' has a non-integer id")
      }
      self.vocab.append((token, id))
    }

    guard let mergeList = model["merges"] else { throw MoEError.format("\(what): no model.merges") }
    guard let items = mergeList.arrayValue else { throw MoEError.format("\(what): model.merges is not an array") }
    merges.reserveCapacity(items.count)
    for (i, item) in items.enumerated() {
      if let s = item.stringValue {
        merges.append(try BPETokenizer.Spec.splitMerge(s, index: i, what: what))
      } else if let pair = item.arrayValue, pair.count == 2, let a = pair[0].stringValue, let b = pair[1].stringValue,
                !a.isEmpty, !b.isEmpty {
        merges.append((a, b))
      } else {
        throw MoEError.format("\(what): merge #\(i) is neither \"a b\" nor [\"a\", \"b\"]")
      }
    }
    if let v = model["unk_token"], !v.isNull {
      guard let name = v.stringValue else { throw MoEError.format("\(what): model.unk_token is not a string") }
      unknown = .text(name)
    }
    fuseUnknown = model["fuse_unk"]?.boolValue ?? false
    if let v = model["ignore_merges"], !v.isNull {
      guard let b = v.boolValue else { throw MoEError.format("\(what): model.ignore_merges is not a boolean") }
      ignoreMerges = b
    }

    if let list = json["added_tokens"], !list.isNull {
      guard let tokens = list.arrayValue else { throw MoEError.format("\(what): added_tokens is not an array") }
      for (i, t) in tokens.enumerated() {
        guard let id = t["id"]?.intValue else { throw MoEError.format("\(what): added token #\(i) has no integer id") }
        guard let content = t["content"]?.stringValue else {
          throw MoEError.format("\(what): added token #\(i) has no string content")
        }
        func flag(_ key: String) throws -> Bool {
          guard let v = t[key], !v.isNull else { return false }
          guard let b = v.boolValue else { throw MoEError.format("\(what): added token '\(content)': '\(key)' is not a boolean") }
          return b
        }
        added.append((id, content, try flag("special"), try flag("lstrip"), try flag("rstrip")))
      }
    }

    if let normalizer = json["normalizer"], !normalizer.isNull {
      let type = normalizer["type"]?.stringValue ?? "?"
      throw MoEError.unsupported("\(what): normalizer '\(type)' is not supported (byte-level BPE without a normalizer only)")
    }
    preTokenizer = try BPETokenizer.Spec.preTokenizer(json["pre_tokenizer"], what: what)
    if let decoder = json["decoder"], !decoder.isNull {
      let type = decoder["type"]?.stringValue ?? "?"
      guard type == "ByteLevel" else {
        throw MoEError.unsupported("\(what): decoder '\(type)' is not supported (only 'ByteLevel')")
      }
    }
    // A TemplateProcessing post-processor (alone or in a Sequence) that starts with a special token adds BOS.
    var processors = json["post_processor"].map { [$0] } ?? []
    if let post = processors.first, post["type"]?.stringValue == "Sequence" {
      processors = post["processors"]?.arrayValue ?? []
    }
    if let post = processors.first(where: { $0["type"]?.stringValue == "TemplateProcessing" }),
       let first = post["single"]?.arrayValue?.first, let name = first["SpecialToken"]?["id"]?.stringValue {
      if let id = post["special_tokens"]?[name]?["ids"]?.arrayValue?.first?.intValue {
        bos = .id(id)
      } else {
        bos = .text(name)
      }
      addBOS = true
    }
  }

  /// "a b" -> ("a", "b"); exactly one space, both sides non-empty.
  static func splitMerge(_ s: String, index: Int, what: String) throws -> (String, String) {
    let utf8 = Array(s.utf8)
    guard let space = utf8.firstIndex(of: 0x20), space > 0, space < utf8.count - 1,
          !utf8[(space + 1)...].contains(0x20) else {
      throw MoEError.format("\(what): merge #\(index) '\(s)' is not two tokens separated by one space")
    }
    return (String(decoding: utf8[..<space], as: UTF8.self), String(decoding: utf8[(space + 1)...], as: UTF8.self))
  }

  /// Reads an HF pre_tokenizer: ByteLevel, optionally after Digits, possibly in a Sequence.
  package static func preTokenizer(_ json: JSON?, what: String) throws -> PreTokenizer {
    var flat: [JSON] = []
    func flatten(_ j: JSON) throws {
      guard let type = j["type"]?.stringValue else { throw MoEError.format("\(what): pre_tokenizer without a type") }
      if type == "Sequence" {
        guard let list = j["pretokenizers"]?.arrayValue else {
          throw MoEError.format("\(what): Sequence pre_tokenizer without 'pretokenizers'")
        }
        for item in list { try flatten(item) }
      } else {
        flat.append(j)
      }
    }
    guard let json, !json.isNull else {
      throw MoEError.unsupported("\(what): no pre_tokenizer (byte-level BPE needs a ByteLevel pre-tokenizer)")
    }
    try flatten(json)
    var result = PreTokenizer()
    var sawByteLevel = false
    for item in flat {
      let type = item["type"]?.stringValue ?? "?"
      switch type {
      case "Digits" where !sawByteLevel:
        result.digits = item["individual_digits"]?.boolValue == true ? .individual : .runs
      case "ByteLevel" where !sawByteLevel:
        sawByteLevel = true
        result.addPrefixSpace = item["add_prefix_space"]?.boolValue ?? true
        result.useRegex = item["use_regex"]?.boolValue ?? true
      default:
        throw MoEError.unsupported("\(what): pre_tokenizer '\(type)' is not supported here (only ByteLevel, optionally after Digits)")
      }
    }
    guard sawByteLevel else {
      throw MoEError.unsupported("\(what): pre_tokenizer has no ByteLevel step (byte-level BPE only)")
    }
    return result
  }

  /// GGUF `tokenizer.ggml.pre` values whose split llama.cpp does with the GPT-2 regex.
  static let ggufGPT2Pre: Set<String> = ["default", "gpt-2", "mpt", "olmo", "jais", "trillion"]
  /// ... and those that isolate each \p{N} first.
  static let ggufDigitPre: Set<String> = ["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"]

  /// From GGUF tokenizer metadata (keys as in TokenizerExport).
  package init(gguf g: GGUFFile) throws {
    let what = "'\(g.path)'"
    self.init(what: what)
    guard let model = g.value("tokenizer.ggml.model")?.stringValue else {
      throw MoEError.notFound("\(what): no tokenizer.ggml.model metadata")
    }
    guard model == "gpt2" else {
      throw MoEError.unsupported("\(what): tokenizer model '\(model)' is not supported (only byte-level BPE, 'gpt2')")
    }
    let pre = g.value("tokenizer.ggml.pre")?.stringValue ?? "default"
    if BPETokenizer.Spec.ggufDigitPre.contains(pre) {
      preTokenizer = PreTokenizer(digits: .individual)
    } else if BPETokenizer.Spec.ggufGPT2Pre.contains(pre) {
      preTokenizer = .gpt2
    } else {
      throw MoEError.unsupported("\(what): pre-tokenizer '\(pre)' is not supported (GPT-2 regex vocabularies only)")
    }
    guard let tokens = g.value("tokenizer.ggml.tokens")?.arrayValue else {
      throw MoEError.format("\(what): no tokenizer.ggml.tokens")
    }
    var types: [Int] = []
    if let v = g.value("tokenizer.ggml.token_type") {
      guard let list = v.arrayValue else { throw MoEError.format("\(what): tokenizer.ggml.token_type is not an array") }
      guard list.count == tokens.count else {
        throw MoEError.format("\(what): tokenizer.ggml.token_type has \(list.count) entries for \(tokens.count) tokens")
      }
      for (i, t) in list.enumerated() {
        guard let type = t.intValue else { throw MoEError.format("\(what): tokenizer.ggml.token_type[\(i)] is not an integer") }
        types.append(type)
      }
    }
    vocab.reserveCapacity(tokens.count)
    for (id, t) in tokens.enumerated() {
      guard let text = t.stringValue else { throw MoEError.format("\(what): tokenizer.ggml.tokens[\(id)] is not a string") }
      let type = id < types.count ? types[id] : 1
      if type == TokenizerExport.controlType || type == TokenizerExport.userDefinedType {
        added.append((id, text, type == TokenizerExport.controlType, false, false))
      }
      vocab.append((text, id))
    }
    if let v = g.value("tokenizer.ggml.merges") {
      guard let list = v.arrayValue else { throw MoEError.format("\(what): tokenizer.ggml.merges is not an array") }
      merges.reserveCapacity(list.count)
      for (i, m) in list.enumerated() {
        guard let s = m.stringValue else { throw MoEError.format("\(what): tokenizer.ggml.merges[\(i)] is not a string") }
        merges.append(try BPETokenizer.Spec.splitMerge(s, index: i, what: what))
      }
    } else {
      throw MoEError.format("\(what): no tokenizer.ggml.merges")
    }
    func id(_ key: String) throws -> BPETokenizer.TokenRef? {
      guard let v = g.value("tokenizer.ggml.\(key)") else { return nil }
      guard let id = v.intValue else { throw MoEError.format("\(what): tokenizer.ggml.\(key) is not an integer") }
      return .id(id)
    }
    bos = try id("bos_token_id")
    eos = try id("eos_token_id")
    if let v = g.value("tokenizer.ggml.add_bos_token") {
      guard let b = v.boolValue else { throw MoEError.format("\(what): tokenizer.ggml.add_bos_token is not a boolean") }
      addBOS = b
    }
    chatTemplate = g.value("tokenizer.chat_template")?.stringValue
  }

  /// Fills BOS/EOS, add_bos and the chat template from tokenizer_config.json
  /// (and chat_template.jinja), with config.json's ids as a fallback.
  mutating func applyTokenizerConfig(directory: String) throws {
    func readJSON(_ name: String) throws -> (JSON, String)? {
      let path = FileSystem.join(directory, name)
      guard FileSystem.isRegularFile(path) else { return nil }
      return (try JSONParser.parse(try FileSystem.readAll(path), what: "'\(path)'"), "'\(path)'")
    }
    /// "<s>" or {"content": "<s>", ...}.
    func tokenText(_ v: JSON?, _ key: String, _ where_: String) throws -> String? {
      guard let v, !v.isNull else { return nil }
      if let s = v.stringValue { return s }
      if let s = v["content"]?.stringValue { return s }
      throw MoEError.format("\(where_): '\(key)' is neither a string nor an object with 'content'")
    }
    if let (config, where_) = try readJSON("tokenizer_config.json") {
      if let v = config["add_bos_token"], !v.isNull {
        guard let b = v.boolValue else { throw MoEError.format("\(where_): 'add_bos_token' is not a boolean") }
        addBOS = b
      }
      if let t = try tokenText(config["bos_token"], "bos_token", where_) { bos = .text(t) }
      if let t = try tokenText(config["eos_token"], "eos_token", where_) { eos = .text(t) }
      if let v = config["chat_template"], !v.isNull {
        if let s = v.stringValue {
          chatTemplate = s
        } else if let list = v.arrayValue {
          // [{"name": "default", "template": "..."}, ...]
          let named = list.first { $0["name"]?.stringValue == "default" } ?? list.first
          chatTemplate = named?["template"]?.stringValue
        } else {
          throw MoEError.format("\(where_): 'chat_template' is neither a string nor a list of named templates")
        }
      }
    }
    if chatTemplate == nil {
      let path = FileSystem.join(directory, "chat_template.jinja")
      if FileSystem.isRegularFile(path) {
        chatTemplate = String(decoding: try FileSystem.readAll(path), as: UTF8.self)
      }
    }
    if bos == nil || eos == nil, let (config, where_) = try readJSON("config.json") {
      func id(_ key: String) throws -> BPETokenizer.TokenRef? {
        guard let v = config[key], !v.isNull else { return nil }
        if let id = v.intValue { return .id(id) }
        if let id = v.arrayValue?.first?.intValue { return .id(id) }  // e.g. several EOS ids
        throw MoEError.format("\(where_): '\(key)' is not an integer")
      }
      if bos == nil { bos = try id("bos_token_id") }
      if eos == nil { eos = try id("eos_token_id") }
    }
  }
}
