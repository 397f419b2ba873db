import Testing
@testable import MoESupport
@testable import MoEFormats

@Suite struct JSONTests {
  @Test func roundTripsNestedValues() throws {
    let text = #"{"a": [1, 2.5, -3e2, true, null], "b": {"c": "x\n\u00e9\ud83d\ude00"}, "d": []}"#
    let v = try JSONParser.parse(text, what: "t")
    #expect(v["a"]?.arrayValue?.count == 5)
    #expect(v["a"]?.arrayValue?[2].doubleValue == -300)
    #expect(v["b"]?["c"]?.stringValue == "x\né😀")
    let again = try JSONParser.parse(v.serialized(indent: 2), what: "t")
    #expect(again == v)
  }

  @Test(arguments: ["", "{", "[1,]", "{\"a\" 1}", "\"abc", "01x", "{} x", "[\"\\q\"]", "tru"])
  func rejectsMalformed(_ text: String) {
    #expect(throws: MoEError.self) { try JSONParser.parse(text, what: "t") }
  }

  @Test func rejectsDeepNesting() {
    let deep = String(repeating: "[", count: 600) + String(repeating: "]", count: 600)
    #expect(throws: MoEError.self) { try JSONParser.parse(deep, what: "t") }
  }
}

@Suite struct JSONNumberKindTests {
  @Test func parserKeepsTheKindOfEachLiteral() throws {
    let v = try JSONParser.parse(#"[3, -7, 3.0, 1e-05, 2E3, -0.5, 0, 12345678901234567890123, NaN, -Infinity]"#, what: "t")
    let items = try #require(v.arrayValue)
    #expect(items[0] == .int(3) && items[1] == .int(-7))
    #expect(items[2] == .float(3) && items[3] == .float(1e-05) && items[4] == .float(2000) && items[5] == .float(-0.5))
    #expect(items[6] == .int(0))
    // An integer too large for an Int is kept as the nearest float.
    #expect(items[7] == .float(12345678901234567890123))
    #expect(items[8].doubleValue?.isNaN == true && items[9] == .float(-.infinity))
  }

  @Test func kindsCompareApartButReadAsNumbers() {
    #expect(JSON.int(2) != JSON.float(2))
    #expect(JSON.float(2).intValue == 2 && JSON.float(2.5).intValue == nil && JSON.float(.infinity).intValue == nil)
    #expect(JSON.int(2).doubleValue == 2 && JSON.float(2.5).doubleValue == 2.5)
    #expect(JSON.int(5).asFloat == .float(5) && JSON.float(5).asFloat == .float(5) && JSON.string("5").asFloat == .string("5"))
    #expect(JSON.unsigned(7) == .int(7) && JSON.unsigned(UInt64.max) == .float(Double(UInt64.max)))
  }

  @Test(arguments: [(0.0, "0.0"), (100000.0, "100000.0"), (1e-05, "1e-05"), (0.02, "0.02"), (-2.5, "-2.5"),
                    (1e16, "1e+16"), (1e15, "1000000000000000.0"), (9.999999747378752e-06, "9.999999747378752e-06"),
                    (0.1 + 0.2, "0.30000000000000004"), (.nan, "NaN"), (.infinity, "Infinity"), (-.infinity, "-Infinity")])
  func floatsAreWrittenShortestWithAPointOrExponent(value: Double, text: String) {
    #expect(JSON.float(value).serialized() == text)
  }

  @Test func integersAreWrittenAsDigits() {
    #expect(JSON.int(100000).serialized() == "100000" && JSON.int(-3).serialized() == "-3")
    #expect(JSON.int(Int.max).serialized() == "9223372036854775807")
  }

  @Test func textRoundTripsWithItsKinds() throws {
    let text = #"{"a":0.0,"b":1e-05,"c":10000.0,"d":7,"e":[1,1.5,-0.0],"f":1e+16}"#
    #expect(try JSONParser.parse(text, what: "t").serialized() == text)
  }

  @Test func everyFloatReadsBackBitIdentical() throws {
    var rng = SystemRandomNumberGenerator()
    for _ in 0..<2000 {
      let d = Double(bitPattern: rng.next())
      guard d.isFinite else { continue }
      let back = try JSONParser.parse(JSON.float(d).serialized(), what: "t")
      guard case let .float(r) = back else { Issue.record("\(d) read back as \(back)"); return }
      #expect(r.bitPattern == d.bitPattern, "\(d)")
    }
  }

  @Test func ggufFloatsBecomeTheirShortestDecimal() {
    #expect(GGUFValue.shortestDecimal(Float(1e-5)) == 1e-05)
    #expect(GGUFValue.shortestDecimal(Float(1e-6)) == 1e-06)
    #expect(GGUFValue.shortestDecimal(100000) == 100000)
    #expect(GGUFValue.shortestDecimal(Float(0.1)) == 0.1)
    for f: Float in [1e-5, 3.14159, 1e30, -7.5e-12, .leastNonzeroMagnitude, .greatestFiniteMagnitude] {
      #expect(Float(GGUFValue.shortestDecimal(f)) == f, "\(f)")
    }
    #expect(GGUFValue.shortestDecimal(.infinity) == .infinity && GGUFValue.shortestDecimal(.nan).isNaN)
  }
}
