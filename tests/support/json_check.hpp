// A strict JSON well-formedness check (RFC 8259 grammar), for testing dump_json:
// returns an empty string when `text` is one JSON value, else what is wrong and where.
#pragma once

#include <cctype>
#include <string>
#include <string_view>

namespace tgtest {

class JsonCheck {
 public:
  explicit JsonCheck(std::string_view text) : s_(text) {}

  std::string run() {
    try {
      space();
      value();
      space();
      if (i_ != s_.size()) bad("text after the value");
    } catch (const std::string& e) {
      return e;
    }
    return {};
  }

 private:
  [[noreturn]] void bad(const char* what) { throw std::string(what) + " at offset " + std::to_string(i_); }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void expect(char c) {
    if (peek() != c) bad("unexpected character");
    ++i_;
  }
  void space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
  }
  void literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) bad("bad literal");
    i_ += word.size();
  }
  void string() {
    expect('"');
    while (peek() != '"') {
      const char c = peek();
      if (c == '\0' || static_cast<unsigned char>(c) < 0x20) bad("unterminated string or control character");
      ++i_;
      if (c != '\\') continue;
      const char e = peek();
      ++i_;
      if (e == 'u') {
        for (int k = 0; k < 4; ++k, ++i_)
          if (!std::isxdigit(static_cast<unsigned char>(peek()))) bad("bad \\u escape");
      } else if (std::string_view("\"\\/bfnrt").find(e) == std::string_view::npos) {
        bad("bad escape");
      }
    }
    ++i_;
  }
  void digits() {
    if (!std::isdigit(static_cast<unsigned char>(peek()))) bad("expected a digit");
    while (std::isdigit(static_cast<unsigned char>(peek()))) ++i_;
  }
  void number() {
    if (peek() == '-') ++i_;
    if (peek() == '0') ++i_;
    else digits();
    if (peek() == '.') {
      ++i_;
      digits();
    }
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      digits();
    }
  }
  template <class Item>
  void sequence(char close, Item item) {
    space();
    if (peek() == close) {
      ++i_;
      return;
    }
    for (;;) {
      space();
      item();
      space();
      if (peek() == close) {
        ++i_;
        return;
      }
      expect(',');
    }
  }
  void value() {
    switch (peek()) {
      case '{':
        ++i_;
        sequence('}', [&] {
          string();
          space();
          expect(':');
          space();
          value();
        });
        break;
      case '[':
        ++i_;
        sequence(']', [&] { value(); });
        break;
      case '"': string(); break;
      case 't': literal("true"); break;
      case 'f': literal("false"); break;
      case 'n': literal("null"); break;
      default: number();
    }
  }

  std::string_view s_;
  std::size_t i_ = 0;
};

inline std::string json_error(std::string_view text) { return JsonCheck(text).run(); }

}  // namespace tgtest
