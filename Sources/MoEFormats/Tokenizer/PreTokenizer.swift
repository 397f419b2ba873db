// Byte-level pre-tokenization for GPT-2 style BPE: the bytes_to_unicode table
// and a hand-written matcher for the GPT-2 split regex (no regex engine, no
// Foundation).

// MARK: - Byte-level alphabet

/// GPT-2's `bytes_to_unicode`: every byte gets a printable scalar so that BPE
/// tokens are strings without spaces or control characters. Printable Latin-1
/// bytes ('!'...'~', '¡'...'¬', '®'...'ÿ') stand for themselves; the other 68
/// bytes take U+0100, U+0101, ... in byte order (so ' ' is 'Ġ', '\n' is 'Ċ').
package enum ByteLevel {
  /// Scalar value standing for each byte: [256].
  package static let scalarOfByte: [UInt32] = {
    var table = [UInt32](repeating: 0, count: 256)
    var next: UInt32 = 256
    for b in 0..<256 {
      if (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b) {
        table[b] = UInt32(b)
      } else {
        table[b] = next
        next += 1
      }
    }
    return table
  }()

  /// Byte standing behind each scalar value below `scalarLimit`, or -1: [scalarLimit].
  static let scalarLimit = 256 + 68
  static let byteOfScalar: [Int16] = {
    var table = [Int16](repeating: -1, count: scalarLimit)
    for (b, s) in scalarOfByte.enumerated() { table[Int(s)] = Int16(b) }
    return table
  }()

  /// UTF-8 of each byte's stand-in scalar (1 or 2 bytes): [256].
  static let utf8OfByte: [[UInt8]] = scalarOfByte.map { value in
    guard let scalar = Unicode.Scalar(value) else { return [] }
    return Array(String(Character(scalar)).utf8)
  }

  /// The byte-level form of raw bytes, as UTF-8 (what vocabularies store).
  static func encodedUTF8<S: Sequence>(_ bytes: S) -> [UInt8] where S.Element == UInt8 {
    var out: [UInt8] = []
    for b in bytes { out.append(contentsOf: utf8OfByte[Int(b)]) }
    return out
  }

  /// The byte-level form of raw bytes, as a string.
  package static func encoded<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
    String(decoding: encodedUTF8(bytes), as: UTF8.self)
  }

  /// The raw bytes behind a byte-level string, or nil when a scalar is outside the alphabet.
  package static func decoded(_ token: String) -> [UInt8]? {
    var out: [UInt8] = []
    for scalar in token.unicodeScalars {
      let v = Int(scalar.value)
      guard v < scalarLimit, byteOfScalar[v] >= 0 else { return nil }
      out.append(UInt8(byteOfScalar[v]))
    }
    return out
  }
}

// MARK: - Scalar classes

/// The classes the GPT-2 regex distinguishes: \p{L}, \p{N}, \s, and the rest.
package enum ScalarClass: UInt8 {
  case other = 0, letter, number, whitespace

  /// Class of one scalar: \p{L} is Lu Ll Lt Lm Lo, \p{N} is Nd Nl No, \s is the
  /// Unicode White_Space property (what Oniguruma's and Python's \s match).
  package static func of(_ scalar: Unicode.Scalar) -> ScalarClass {
    if scalar.value < 0x80 { return ascii[Int(scalar.value)] }
    let properties = scalar.properties
    switch properties.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
      return .letter
    case .decimalNumber, .letterNumber, .otherNumber:
      return .number
    default:
      return properties.isWhitespace ? .whitespace : .other
    }
  }

  package static let ascii: [ScalarClass] = (0..<128).map { v in
    switch v {
    case 0x41...0x5A, 0x61...0x7A: return .letter
    case 0x30...0x39: return .number
    case 0x09...0x0D, 0x20: return .whitespace
    default: return .other
    }
  }
}

// MARK: - Pre-tokenizer

/// How a byte-level BPE vocabulary cuts text into words before merging:
/// optionally isolating digits first (HF `Digits`, llama.cpp's `\p{N}` split
/// for SmolLM/StarCoder vocabularies), optionally adding a leading space, then
/// the GPT-2 regex
///   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
package struct PreTokenizer: Sendable, Equatable {
  package enum DigitSplit: Sendable, Equatable {
    /// Digits go to the regex like any other text.
    case none
    /// Each \p{N} scalar is a word of its own.
    case individual
    /// Each run of \p{N} scalars is a word of its own.
    case runs
  }

  package var digits: DigitSplit = .none
  /// HF ByteLevel `add_prefix_space`: a piece not starting with ' ' gets one.
  package var addPrefixSpace = false
  /// HF ByteLevel `use_regex`: false keeps each piece whole.
  package var useRegex = true

  /// Plain GPT-2: the regex only.
  package static let gpt2 = PreTokenizer()

  /// Reusable per-call buffers: the scalars of the text being split.
  package struct Scratch {
    /// Byte offset where each scalar starts: [scalars + 1] (the last entry is the end).
    package var starts: [Int] = []
    /// Class of each scalar: [scalars].
    var classes: [ScalarClass] = []
  }

  /// Splits `text[range]` (valid UTF-8) into pre-tokens, calling `word` with
  /// each one's byte range, in order. `addPrefixSpace` is left to the caller
  /// (it needs a byte that is not in `text`); see `pieces`.
  package func split(_ text: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, scratch: inout Scratch,
                     word: (Range<Int>) -> Void) {
    guard !range.isEmpty else { return }
    PreTokenizer.decodeScalars(text, range, into: &scratch)
    let starts = scratch.starts
    let classes = scratch.classes
    forEachPiece(classes) { scalars, isDigits in
      if isDigits {
        word(starts[scalars.lowerBound]..<starts[scalars.upperBound])
      } else {
        regexSplit(text, starts, classes, scalars, word: word)
      }
    }
  }

  /// Byte ranges of the pieces the regex would see, digits isolated (when
  /// asked) and not yet given a prefix space. With `addPrefixSpace` each
  /// piece gets its own space, as HF does.
  package func pieces(_ text: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, scratch: inout Scratch) -> [Range<Int>] {
    guard !range.isEmpty else { return [] }
    PreTokenizer.decodeScalars(text, range, into: &scratch)
    let starts = scratch.starts
    var out: [Range<Int>] = []
    forEachPiece(scratch.classes) { scalars, _ in out.append(starts[scalars.lowerBound]..<starts[scalars.upperBound]) }
    return out
  }

  /// Cuts scalars into pieces: each digit (or digit run) alone when `digits`
  /// asks for it, the text between digits as one piece. Empty pieces are skipped.
  private func forEachPiece(_ classes: [ScalarClass], _ body: (Range<Int>, _ isDigits: Bool) -> Void) {
    let count = classes.count
    var pieceStart = 0
    var k = 0
    if digits != .none {
      while k < count {
        guard classes[k] == .number else { k += 1; continue }
        var end = k + 1
        if digits == .runs { while end < count && classes[end] == .number { end += 1 } }
        if pieceStart < k { body(pieceStart..<k, false) }
        body(k..<end, true)
        k = end
        pieceStart = end
      }
    }
    if pieceStart < count { body(pieceStart..<count, false) }
  }

  /// The GPT-2 regex over scalars `scalars` (indices into `starts`/`classes`).
  private func regexSplit(_ text: UnsafeBufferPointer<UInt8>, _ starts: [Int], _ classes: [ScalarClass],
                          _ scalars: Range<Int>, word: (Range<Int>) -> Void) {
    guard !scalars.isEmpty else { return }
    guard useRegex else { word(starts[scalars.lowerBound]..<starts[scalars.upperBound]); return }
    let end = scalars.upperBound
    var k = scalars.lowerBound
    while k < end {
      let first = text[starts[k]]
      // 's 't 're 've 'm 'll 'd: ASCII apostrophe, lowercase, case-sensitive.
      if first == UInt8(ascii: "'"), k + 1 < end {
        let c1 = text[starts[k + 1]]
        var length = 0
        if c1 == UInt8(ascii: "s") || c1 == UInt8(ascii: "t") || c1 == UInt8(ascii: "m") || c1 == UInt8(ascii: "d") {
          length = 2
        } else if k + 2 < end {
          let c2 = text[starts[k + 2]]
          if (c1 == UInt8(ascii: "r") && c2 == UInt8(ascii: "e")) || (c1 == UInt8(ascii: "v") && c2 == UInt8(ascii: "e"))
            || (c1 == UInt8(ascii: "l") && c2 == UInt8(ascii: "l")) {
            length = 3
          }
        }
        if length > 0 {
          word(starts[k]..<starts[k + length])
          k += length
          continue
        }
      }
      // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional U+0020, then a run of one class.
      var runStart = k
      if first == 0x20, k + 1 < end, classes[k + 1] != .whitespace { runStart = k + 1 }
      let runClass = classes[runStart]
      if runClass != .whitespace {
        var e = runStart + 1
        while e < end && classes[e] == runClass { e += 1 }
        word(starts[k]..<starts[e])
        k = e
        continue
      }
      // '\s+(?!\S)|\s+': a whitespace run; when non-whitespace follows, the
      // run's last scalar is left to start the next word (unless it is alone).
      var e = k + 1
      while e < end && classes[e] == .whitespace { e += 1 }
      if e < end && e - k >= 2 { e -= 1 }
      word(starts[k]..<starts[e])
      k = e
    }
  }

  /// Decodes `text[range]` (valid UTF-8; malformed bytes are taken one at a
  /// time as 'other') into scalar starts and classes.
  static func decodeScalars(_ text: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, into scratch: inout Scratch) {
    scratch.starts.removeAll(keepingCapacity: true)
    scratch.classes.removeAll(keepingCapacity: true)
    var i = range.lowerBound
    let end = range.upperBound
    while i < end {
      let lead = text[i]
      scratch.starts.append(i)
      if lead < 0x80 {
        scratch.classes.append(ScalarClass.ascii[Int(lead)])
        i += 1
        continue
      }
      let length = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
      var value = UInt32(lead) & (length == 4 ? 0x07 : length == 3 ? 0x0F : 0x1F)
      var valid = length > 1 && i + length <= end
      if valid {
        for j in 1..<length {
          let c = text[i + j]
          if c & 0xC0 != 0x80 { valid = false; break }
          value = value << 6 | UInt32(c & 0x3F)
        }
      }
      if valid, let scalar = Unicode.Scalar(value) {
        scratch.classes.append(ScalarClass.of(scalar))
        i += length
      } else {
        scratch.classes.append(.other)
        i += 1
      }
    }
    scratch.starts.append(end)
  }
}
