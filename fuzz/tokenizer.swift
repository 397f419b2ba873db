// tokenizer.json: the JSON parser, reading the file into a tokenizer spec,
// building the tokenizer, then encoding and decoding sample texts, texts made
// of the file's own tokens, and ids from the input.

@testable import MoESupport
@testable import MoEFormats

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTokenizer(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
  fuzzOne(data, size) { bytes in
    let json = try JSONParser.parse(bytes, what: "tokenizer.json")
    let spec = try BPETokenizer.Spec(tokenizerJSON: json, what: "tokenizer.json")
    let tokenizer = try BPETokenizer(spec: spec)

    // Texts made of the file's tokens: raw bytes of a few vocabulary tokens
    // and the added tokens' contents, glued together and with spaces.
    var pieces: [String] = []
    for (token, _) in spec.vocab.prefix(16) {
      if let raw = ByteLevel.decoded(token) { pieces.append(String(decoding: raw, as: UTF8.self)) }
    }
    for t in spec.added.prefix(8) { pieces.append(t.content) }
    let extra = [pieces.joined(), pieces.joined(separator: " "), pieces.reversed().joined(separator: "\n")]

    // Decoding reproduces the text when every byte has a token, no prefix
    // space is added, and added tokens neither strip whitespace nor share an
    // id with another token.
    let vocabIds = Set(spec.vocab.map { $0.1 })
    var addedIds = Set<Int>()
    var addedClean = true
    for t in spec.added {
      if t.lstrip || t.rstrip || vocabIds.contains(t.id) || !addedIds.insert(t.id).inserted { addedClean = false }
    }
    let roundTrips = !spec.preTokenizer.addPrefixSpace && !tokenizer.idOfByte.contains(-1) && addedClean
    exercise(tokenizer, extra: extra, roundTrips: roundTrips)

    // Ids taken from the input itself.
    let ids = (0..<min(size / 4, 64)).map { bytes.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self) }
    _ = tokenizer.decode(ids, skipSpecial: false)
    _ = tokenizer.decode(ids, skipSpecial: true)
  }
}
