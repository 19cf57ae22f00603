"""docqa.tokenize: English, code and Chinese terms, normalisation, stop words, bigrams."""

from __future__ import annotations

import pytest

from docqa.tokenize import is_code_term, tokenize, tokenize_query


@pytest.mark.parametrize(
    "text, expected",
    [
        ("dpkg -L", ["dpkg", "-L"]),
        ("dpkg -l", ["dpkg", "-l"]),
        ("/etc/fstab", ["/etc/fstab", "etc", "fstab"]),
        ("--force", ["--force", "forc"]),
        ("0x1F", ["0x1f"]),
        ("apt-get", ["apt-get", "apt", "get"]),
        ("foo.bar()", ["foo.bar", "foo", "bar"]),
        ("C++", ["c++"]),
        ("python3.11", ["python3.11", "python3", "python", "11"]),
        ("ERR_CONNECTION_REFUSED", ["err_connection_refused", "err", "connect", "refus"]),
        ("my_var", ["my_var", "var"]),
        ("~/.bashrc", ["~/.bashrc", "bashrc"]),
        ("Edit /etc/fstab. Then run mount -a.", ["edit", "/etc/fstab", "etc", "fstab", "run", "mount", "-a"]),
        ("Installing the packages", ["instal", "packag"]),
        ("the of and what is", []),
        ("", []),
    ],
)
def test_tokenize_english_and_code(text: str, expected: list[str]) -> None:
    assert tokenize(text) == expected


def test_full_width_is_normalised() -> None:
    assert tokenize("ＡＰＴ－ＧＥＴ，ｆｓｔａｂ") == tokenize("APT-GET, fstab") == ["apt-get", "apt", "get", "fstab"]


def test_mixed_chinese_english() -> None:
    toks = tokenize("用 apt-get install 安装软件包")
    assert toks[:5] == ["用", "apt-get", "apt", "get", "instal"]
    assert {"安装", "软件", "软件包"} <= set(toks)
    # no space between scripts still separates them
    assert {"apt-get", "安装", "软件包"} <= set(tokenize("用apt-get安装软件包"))


def test_chinese_stop_words_and_bigrams() -> None:
    toks = tokenize("北京大学的学生在读书")
    assert "的" not in toks and "在" not in toks
    assert {"北京", "大学", "北京大学", "学生", "读书"} <= set(toks)
    assert "京大" in toks  # a bigram jieba did not emit as a word
    assert "京大" not in tokenize("北京大学的学生在读书", bigrams=False)
    assert tokenize("什么是如何的") == []


def test_query_terms_of_a_chinese_question_with_a_command() -> None:
    # 如何 and 的 are stop words; 用 is a word, and 何用 a bigram jieba did not emit; 的 blocks the bigrams 包的/的文;
    # the short option keeps its case. Words of each CJK run come first, then its bigrams.
    assert tokenize_query("如何用 dpkg -L 查看软件包的文件") == [
        "用",
        "何用",
        "dpkg",
        "-L",
        "查看",
        "软件",
        "软件包",
        "文件",
        "看软",
        "件包",
    ]


def test_code_terms() -> None:
    assert is_code_term("-w") and is_code_term("/etc/fstab") and is_code_term("apt-get")
    assert not is_code_term("grep") and not is_code_term("选项") and not is_code_term("--")


def test_query_bigrams_are_the_pairs_jieba_did_not_emit():
    from docqa.tokenize import query_bigrams

    q = "如何查看日志"
    assert query_bigrams(q) == {"何查", "看日"}
    assert query_bigrams(q) <= set(tokenize_query(q))  # a subset of the query's own terms
    assert not query_bigrams(q) & set(tokenize_query(q, bigrams=False))  # never a word
    assert query_bigrams("How do I use grep -w?") == set()
    assert query_bigrams("") == set()
