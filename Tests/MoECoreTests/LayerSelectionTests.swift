import Testing
@testable import MoESupport
@testable import MoEUpcycling

@Suite struct LayerSelectionTests {
  @Test func allAndNilSelectEveryLayer() throws {
    #expect(try parseLayerSelection(nil, numLayers: 4) == [true, true, true, true])
    #expect(try parseLayerSelection("all", numLayers: 3) == [true, true, true])
    #expect(try parseLayerSelection("  all ", numLayers: 2) == [true, true])
    #expect(try parseLayerSelection(nil, numLayers: 0) == [])
  }

  @Test func emptyStringIsAnError() throws {
    // Only nil means every layer; an empty or blank string is a mistake, answered with "use all".
    for spec in ["", "   "] {
      #expect {
        _ = try parseLayerSelection(spec, numLayers: 2)
      } throws: { error in
        guard let e = error as? MoEError else { return false }
        return e.kind == .invalidArgument && e.message.contains("empty") && e.message.contains("use all")
      }
    }
  }

  @Test func everyN() throws {
    #expect(try parseLayerSelection("every:2", numLayers: 5) == [false, true, false, true, false])
    #expect(try parseLayerSelection("every:1", numLayers: 3) == [true, true, true])
    #expect(try parseLayerSelection("every:3", numLayers: 7) == [false, false, true, false, false, true, false])
    #expect(try parseLayerSelection("every:5", numLayers: 5) == [false, false, false, false, true])
  }

  @Test func lists() throws {
    #expect(try parseLayerSelection("0,2-3", numLayers: 5) == [true, false, true, true, false])
    #expect(try parseLayerSelection("4", numLayers: 5) == [false, false, false, false, true])
    #expect(try parseLayerSelection("1-1", numLayers: 3) == [false, true, false])
    #expect(try parseLayerSelection("0-4", numLayers: 5) == [true, true, true, true, true])
    #expect(try parseLayerSelection("3,1,3", numLayers: 4) == [false, true, false, true])  // order and repeats don't matter
    #expect(try parseLayerSelection(" 0 , 2 ", numLayers: 3) == [true, false, true])
  }

  static func expectInvalid(_ spec: String, numLayers: Int = 5, mentions: String? = nil,
                            sourceLocation: SourceLocation = #_sourceLocation) {
    do {
      let flags = try parseLayerSelection(spec, numLayers: numLayers)
      Issue.record("'\(spec)' was accepted: \(flags)", sourceLocation: sourceLocation)
    } catch let e as MoEError {
      #expect(e.kind == .invalidArgument, sourceLocation: sourceLocation)
      #expect(e.message.contains(spec.trimmingSpaces), "'\(e.message)'", sourceLocation: sourceLocation)
      if let m = mentions { #expect(e.message.contains(m), "'\(e.message)' lacks '\(m)'", sourceLocation: sourceLocation) }
    } catch {
      Issue.record("\(error)", sourceLocation: sourceLocation)
    }
  }

  @Test func rejectsOutOfRange() {
    Self.expectInvalid("5", mentions: "layer 5 is out of range")
    Self.expectInvalid("0,7", mentions: "layer 7")
    Self.expectInvalid("3-9", mentions: "layer 9")
    Self.expectInvalid("0", numLayers: 0)
  }

  @Test func rejectsBadEvery() {
    Self.expectInvalid("every:0", mentions: "positive")
    Self.expectInvalid("every:-2", mentions: "positive")
    Self.expectInvalid("every:", mentions: "positive")
    Self.expectInvalid("every:x", mentions: "positive")
    Self.expectInvalid("every:2,4")
  }

  @Test func rejectsMalformedLists() {
    for spec in ["x", "3-1", "1,", ",1", "1,,2", "-1", "1-", "1-2-3", "a-b", "1.5", "all,1", "every 2", "0x1"] {
      Self.expectInvalid(spec, mentions: nil)
    }
    Self.expectInvalid("x", mentions: "'x' is not a layer index or range")
    Self.expectInvalid("3-1", mentions: "'3-1'")
  }

  /// "every:N" with N > layers selects nothing: rejected like an empty list.
  @Test func everyNBeyondLayerCountSelectsNothing() {
    #expect(throws: MoEError.self) { try parseLayerSelection("every:6", numLayers: 5) }
    #expect(throws: MoEError.self) { try parseLayerSelection("every:+2", numLayers: 5) }
  }
}
