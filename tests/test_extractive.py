"""The extractive answerer: answer units, their selection, rendering and streaming (docqa/generate/extractive.py)."""

from __future__ import annotations

import threading

import pytest

from docqa.generate.base import GenerationOptions, Generator
from docqa.generate.extractive import (
    ANSWER_UNITS,
    ANSWER_UNITS_ZH,
    NOTHING,
    ExtractiveAnswerer,
    Quote,
    Unit,
    render,
    select,
    split_units,
)


def texts(units: list[Unit]) -> list[str]:
    return [u.text for u in units]


def kinds(units: list[Unit]) -> list[tuple[str, str]]:
    return [(u.kind, u.text) for u in units]


# ----------------------------------------------------------------------------------------------- split_units


def test_chinese_sentences_split_at_full_stops_and_semicolons():
    units = split_units("可以。您可以使用 cron-apt；这一工具定期升级系统！它默认只下载？是的")
    assert texts(units) == ["可以。", "您可以使用 cron-apt；", "这一工具定期升级系统！", "它默认只下载？", "是的"]
    assert {u.kind for u in units[:3]} == {"sentence"}


def test_english_sentences_split_but_not_inside_paths_versions_dotted_names_or_abbreviations():
    text = (
        "Edit /etc/apt/sources.list first. Use os.path.join, e.g. for portable paths. "
        "Python 3.12.1 is fine. See https://www.debian.org/doc/index.html for more."
    )
    assert texts(split_units(text)) == [
        "Edit /etc/apt/sources.list first.",
        "Use os.path.join, e.g. for portable paths.",
        "Python 3.12.1 is fine.",
        "See https://www.debian.org/doc/index.html for more.",
    ]


def test_offsets_point_into_the_passage():
    text = "First one. Second one here."
    for u in split_units(text):
        assert text[u.start : u.end] == u.text


def test_pdf_line_wraps_are_joined_and_chinese_wraps_leave_no_space():
    units = split_units(
        "如果您已经下载了这些文件，您就可以从系统中删除这\n些文件。\nPackages can be upgraded in place, even in\nrunning systems."
    )
    assert texts(units) == [
        "如果您已经下载了这些文件，您就可以从系统中删除这些文件。",
        "Packages can be upgraded in place, even in running systems.",
    ]


def test_command_after_an_introducing_sentence_is_one_command_unit():
    # the real layout of debian-faq.en.pdf: the command on its own line, no indentation
    text = (
        "To list all the files provided by the installed package foo execute the command\n"
        "dpkg --listfiles foo\n"
        "Note that the files created by the installation scripts aren't displayed."
    )
    assert kinds(split_units(text)) == [
        ("sentence", "To list all the files provided by the installed package foo execute the command"),
        ("command", "dpkg --listfiles foo"),
        ("sentence", "Note that the files created by the installation scripts aren't displayed."),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "$ tar -xzf foo.tar.gz -C /tmp/out",
        "# apt-get install build-essential",
        ">>> sorted(data, reverse=True)",
        "python3 -m venv tutorial-env",
    ],
)
def test_shell_prompts_and_code_lines_are_kept_whole(line):
    units = split_units(f"Run this:\n\n{line}\n\nThat is all.")
    assert ("command", line) in kinds(units)


def test_ascii_command_between_chinese_lines_is_a_command():
    units = split_units("然后执行 \napt-get update\n然后运行 \napt-get dist-upgrade")
    assert kinds(units) == [
        ("sentence", "然后执行"),
        ("command", "apt-get update"),
        ("sentence", "然后运行"),
        ("command", "apt-get dist-upgrade"),
    ]


def test_fenced_code_lines_are_commands():
    units = split_units(
        "Change the call to:\n\n``` python\nlogging.basicConfig(filename='example.log', filemode='w')\n```"
    )
    assert units[-1] == Unit(
        "logging.basicConfig(filename='example.log', filemode='w')", units[-1].start, units[-1].end, "command"
    )


def test_markdown_table_row_carries_its_header():
    units = split_units("| option | meaning |\n|---|---|\n| -x | extract files |\n| -t | list the contents |")
    assert [u.kind for u in units] == ["row", "row", "row"]
    assert units[1].text == "option: -x; meaning: extract files"
    assert units[2].text == "option: -t; meaning: list the contents"


def test_man_page_option_entry_is_one_item_with_its_description():
    text = (
        "       -v, --invert-match\n              改变匹配的意义，只选择不匹配的行。\n\n"
        "       -w, --word-regexp\n              只选择含有能组成完整的词的匹配的行。判断方法是匹配的子字符串必须是一行的开始。"
    )
    assert kinds(split_units(text)) == [
        ("item", "-v, --invert-match 改变匹配的意义，只选择不匹配的行。"),
        ("item", "-w, --word-regexp 只选择含有能组成完整的词的匹配的行。"),
        ("sentence", "判断方法是匹配的子字符串必须是一行的开始。"),
    ]


def test_unindented_option_list_from_a_word_document():
    units = split_units("-a, --all\n不要忽略以点号（“.”）起始的条目\n-A, --almost-all\n不要列出隐含的 . 和 ..")
    assert kinds(units) == [
        ("item", "-a, --all 不要忽略以点号（“.”）起始的条目"),
        ("item", "-A, --almost-all 不要列出隐含的 . 和 .."),
    ]


def test_option_description_wrapped_over_lines_stays_one_item():
    # the chunker strips the first line's indentation, so the term looks no less indented than its description
    text = (
        "-m NUM, --max-count=NUM\n              在找到 NUM\n              个匹配的行之后，不再读这个文件。如果输入是\n"
        "              标准输入，grep 保证它被定位于最后一次匹配的行之后。"
    )
    assert kinds(split_units(text)) == [
        ("item", "-m NUM, --max-count=NUM 在找到 NUM 个匹配的行之后，不再读这个文件。"),
        ("sentence", "如果输入是标准输入，grep 保证它被定位于最后一次匹配的行之后。"),
    ]


def test_list_items_and_headings():
    units = split_units(
        "8.4. 如何显示已安装的软件包包含的文件？\n\n- first point, still\n  the same item\n- second point"
    )
    assert kinds(units) == [
        ("heading", "8.4. 如何显示已安装的软件包包含的文件？"),
        ("item", "- first point, still the same item"),
        ("item", "- second point"),
    ]


def test_empty_and_blank_text_have_no_units():
    assert split_units("") == []
    assert split_units("  \n\n ") == []


# ----------------------------------------------------------------------------------------------- select

DISTRACTOR = (
    "Packages can be upgraded in place, even in running systems. Debian has a start-stop-daemon program that "
    "is invoked to stop, then restart running processes if necessary during a package upgrade."
)
ANSWER = (
    "How do I display the files of an installed package?\n"
    "To list all the files provided by the installed package foo execute the command\n"
    "dpkg --listfiles foo\n"
    "Note that the files created by the installation scripts aren't displayed.\n"
    "The Debian archive keeps old versions of packages for a while."
)


def test_the_answering_command_and_its_introduction_come_together():
    quotes = select("How can I list the files of an installed package?", [DISTRACTOR, ANSWER])
    got = [(q.passage, q.text) for q in quotes]
    assert (2, "To list all the files provided by the installed package foo execute the command") in got
    assert (2, "dpkg --listfiles foo") in got
    # reading order within the passage: the introduction before its command
    i = got.index((2, "dpkg --listfiles foo"))
    assert got[i - 1][1].startswith("To list all the files")
    # the FAQ question line is a signpost, not an answer
    assert all(not q.text.endswith("?") for q in quotes)


def test_exact_technical_term_beats_a_sentence_that_shares_more_words():
    passages = [
        "grep prints each line that matches the pattern; grep options are listed below.",
        "--ignore-case\n   ignore case distinctions in patterns and data",
    ]
    quotes = select("What does the --ignore-case option of grep do?", passages, max_units=1)
    assert [(q.passage, q.text) for q in quotes] == [(2, "--ignore-case ignore case distinctions in patterns and data")]


def test_chinese_question_words_carry_no_weight():
    passages = [
        "怎么办？为什么？如何如何，怎么怎么。",
        "要列出已安装的软件包 foo 提供的所有文件，请执行\n\ndpkg --listfiles foo\n\n注意，不会显示软件包的安装脚本所创建的文件。",
    ]
    quotes = select("怎样列出一个已安装软件包里的所有文件？", passages)
    assert quotes and quotes[0].passage == 2
    assert "dpkg --listfiles foo" in [q.text for q in quotes]
    assert all(q.passage == 2 for q in quotes)


def test_a_chinese_question_prefers_the_unit_that_names_what_it_describes():
    # the question says 去重 and 忽略大小写 in words; the answer names the command (uniq) and its option
    passages = [
        "比较行时忽略大小写可以让排序结果更符合直觉，去重之前通常先排序。",
        "uniq 命令用来去掉相邻的重复行；加上 -i 选项可以在比较时忽略大小写。",
    ]
    q = "去重的时候怎么忽略大小写？"
    assert select(q, passages, max_units=1)[0].passage == 2


def test_a_passage_sharing_only_question_words_is_not_quoted():
    assert select("不想让软件包被升级，应该怎么做？能不能做到？", ["您应该怎么做？能不能做到？"]) == []
    assert select("What do I need to know? Tell me the way.", ["You need to know the way; tell me."]) == []


def test_a_matching_faq_question_lends_its_score_to_the_answer_under_it():
    passages = [
        "Mirrors carry the archive for apt.",
        "How do I keep a package at its current version?\nRun apt-mark hold foo.\n\nSee also the mirrors.",
    ]
    quotes = select("How do I keep a package at its current version?", passages, max_units=1)
    assert [(q.passage, q.text) for q in quotes] == [(2, "Run apt-mark hold foo.")]


def test_sentence_ending_in_a_colon_pulls_in_the_command_after_it():
    passage = (
        "Once you've created a virtual environment, you may activate it.\n\nOn Windows, run:\n\n"
        "tutorial-env\\Scripts\\activate.bat\n\nOn Unix or MacOS, run:\n\nsource tutorial-env/bin/activate\n\n"
        "This script is written for the bash shell."
    )
    quotes = select("How do I activate the environment on MacOS?", [passage])
    got = [q.text for q in quotes]
    assert "On Unix or MacOS, run:" in got
    assert got[got.index("On Unix or MacOS, run:") + 1] == "source tutorial-env/bin/activate"


def test_how_questions_prefer_the_option_entry_that_names_what_is_asked():
    passages = [
        "ro Mount the filesystem read-only.\n\nrw Mount the filesystem read-write.",
        "-r, --read-only\n       Mount the filesystem read-only. A synonym is -o ro.",
    ]
    quotes = select("How do I mount a USB drive read-only?", passages, max_units=1)
    assert [(q.passage, q.text) for q in quotes] == [(2, "-r, --read-only Mount the filesystem read-only.")]


def test_a_later_sentence_of_an_option_description_brings_its_option():
    passage = (
        "The options are:\n\n‘--follow-symlinks’\n     This option is available only on platforms that support symbolic links.\n"
        "     If the file named on the command line is a symbolic link, sed edits the ultimate destination of the link."
    )
    got = [q.text for q in select("How does sed edit the destination of a symbolic link?", [passage], max_units=1)]
    assert got[0].startswith("‘--follow-symlinks’")
    assert got[-1].startswith("If the file named on the command line is a symbolic link")


def test_citations_name_the_passage_each_quote_came_from():
    passages = [
        "Nothing relevant lives here at all.",
        "Use apt-mark hold foo to keep foo at its version.",
        "Run apt-mark unhold foo to let it upgrade again.",
    ]
    quotes = select("How do I hold a package with apt-mark?", passages)
    by_text = {q.text: q.passage for q in quotes}
    assert by_text["Use apt-mark hold foo to keep foo at its version."] == 2
    assert by_text.get("Run apt-mark unhold foo to let it upgrade again.", 3) == 3
    assert 1 not in by_text.values()
    for q in quotes:
        assert passages[q.passage - 1][q.start :].startswith(q.text)


def test_quotes_are_grouped_by_passage_in_reading_order():
    p1 = "The grep tool searches files. Use grep -i to ignore case in grep. Case matters by default."
    p2 = "Use grep -w to match whole words. The -i option also ignores case for grep."
    quotes = select("How do I make grep ignore case with -i?", [p1, p2], max_units=4)
    passages = [q.passage for q in quotes]
    assert passages == sorted(passages, key=passages.index)  # each passage's quotes are contiguous
    for p in set(passages):
        starts = [q.start for q in quotes if q.passage == p]
        assert starts == sorted(starts)


def test_max_chars_is_respected_and_an_over_long_unit_is_cut_with_an_ellipsis():
    long_sentence = "The venv module creates virtual environments " + "with many words " * 60 + "at the end."
    quotes = select(
        "How does venv create virtual environments?", [long_sentence, "venv creates environments."], max_chars=120
    )
    assert sum(len(q.text) for q in quotes) <= 120
    assert quotes[0].text.endswith("…")
    assert not quotes[0].text[:-1].endswith(" ")
    many = [f"Virtual environments: sentence {i} about venv environments." for i in range(30)]
    quotes = select("virtual environments venv", [" ".join(many)], max_chars=200, max_units=10)
    assert sum(len(q.text) for q in quotes) <= 200


def test_max_units_limits_the_picks():
    text = " ".join(f"Sentence {i} mentions rsync and its options." for i in range(10))
    assert len(select("What does rsync do?", [text], max_units=2)) == 2


def test_injected_similarity_decides_between_units_that_share_no_words():
    passage = "Pass reverse=True to sorted. Pass key=str.lower to sorted."

    def sim(question, units):
        return [0.9 if "reverse" in u else 0.1 for u in units]

    def sim_other(question, units):
        return [0.1 if "reverse" in u else 0.9 for u in units]

    q = "How do I sort from largest to smallest?"
    assert select(q, [passage], similarity=sim, max_units=1)[0].text == "Pass reverse=True to sorted."
    assert select(q, [passage], similarity=sim_other, max_units=1)[0].text == "Pass key=str.lower to sorted."


def test_select_is_deterministic_and_handles_no_passages():
    passages = [DISTRACTOR, ANSWER, ANSWER]
    q = "How can I list the files of an installed package?"
    assert select(q, passages) == select(q, passages)
    assert select(q, []) == []
    assert select(q, ["", "   "]) == []
    # overlapping chunks: the same sentence is quoted once
    texts_ = [x.text for x in select(q, [ANSWER, ANSWER], max_units=8)]
    assert "dpkg --listfiles foo" in texts_
    assert len(texts_) == len(set(texts_))


# ----------------------------------------------------------------------------------------------- render + answerer


def test_render_lead_in_follows_the_language():
    quotes = [Quote(2, "dpkg --listfiles foo", 0, 1.0), Quote(2, "注意，不会显示安装脚本所创建的文件。", 30, 0.5)]
    assert render(quotes, "zh").splitlines() == [
        "文档中的相关原文：",
        "dpkg --listfiles foo [2]",
        "注意，不会显示安装脚本所创建的文件。 [2]",
    ]
    assert render(quotes[:1], "en") == "From the documents:\ndpkg --listfiles foo [2]"
    assert render([], "en") != render([], "zh")


def test_answerer_streams_pieces_that_join_into_the_rendered_answer():
    a = ExtractiveAnswerer()
    assert a.name == "extractive"
    q = "How can I list the files of an installed package?"
    pieces = list(a.answer(q, [DISTRACTOR, ANSWER]))
    assert len(pieces) > 1
    assert "".join(pieces) == render(select(q, [DISTRACTOR, ANSWER]), "en")
    assert "dpkg --listfiles foo [2]" in "".join(pieces)


def test_answerer_uses_similarity_only_for_covered_languages():
    calls = []

    def sim(question, units):
        calls.append(question)
        return [0.5] * len(units)

    a = ExtractiveAnswerer(similarity=sim, covered_languages=frozenset({"en"}))
    "".join(a.answer("How can I list the files of an installed package?", [ANSWER]))
    assert len(calls) == 1
    zh = "".join(
        a.answer("怎样列出软件包里的所有文件？", ["要列出软件包 foo 的所有文件，请执行\n\ndpkg --listfiles foo"])
    )
    assert len(calls) == 1  # not called for Chinese
    assert zh.startswith("文档中的相关原文：") and "dpkg --listfiles foo [1]" in zh


@pytest.mark.parametrize("max_chars", [80, 150, 600])
def test_answerer_output_with_lead_in_and_markers_fits_max_chars(max_chars):
    a = ExtractiveAnswerer(max_chars=max_chars)
    text = "".join(a.answer("How can I list the files of an installed package?", [ANSWER, DISTRACTOR, ANSWER]))
    assert len(text) <= max_chars
    assert text.startswith("From the documents:\n")


def test_answerer_max_units_bounds_the_picks():
    text = " ".join(f"Step {i} runs rsync." for i in range(ANSWER_UNITS + 4))
    assert len(list(ExtractiveAnswerer(max_units=2).answer("What does rsync do?", [text]))) == 3  # lead-in + 2
    assert len(list(ExtractiveAnswerer().answer("What does rsync do?", [text]))) == 1 + ANSWER_UNITS


def test_chinese_questions_get_more_picks_by_default():
    text = "".join(f"第{i}句提到 rsync 同步。" for i in range(ANSWER_UNITS_ZH + 4))
    assert len(list(ExtractiveAnswerer().answer("rsync 同步是什么？", [text]))) == 1 + ANSWER_UNITS_ZH
    assert len(list(ExtractiveAnswerer(max_units=3).answer("rsync 同步是什么？", [text]))) == 1 + 3


# ----------------------------------------------------------------------------------------------- as a Generator


def test_answerer_is_a_generator_that_takes_passages_and_no_model_context():
    a = ExtractiveAnswerer()
    assert isinstance(a, Generator)
    assert a.name == "extractive" and a.is_chat_model is False
    assert a.passage_limit > 0
    assert a.context_length >= 100_000  # the prompt budget never drops a passage for it
    assert a.count_tokens("some words") > 0  # the defaults still work for prompt building


def test_stream_grounded_quotes_the_passages_not_the_prompt():
    a = ExtractiveAnswerer()
    q = "How can I list the files of an installed package?"
    prompt = [{"role": "user", "content": "this prompt text is not what gets quoted"}]
    pieces = list(a.stream_grounded(q, [DISTRACTOR, ANSWER], prompt, GenerationOptions()))
    assert "".join(pieces) == "".join(a.answer(q, [DISTRACTOR, ANSWER]))
    assert "dpkg --listfiles foo [2]" in "".join(pieces)
    assert "".join(a.stream_grounded(q, [DISTRACTOR, ANSWER], prompt)) == "".join(pieces)  # options optional


def test_stream_grounded_with_nothing_to_quote_says_so_in_the_question_language():
    a = ExtractiveAnswerer()
    assert "".join(a.stream_grounded("How do I frobnicate?", [], "p")) == NOTHING["en"]
    assert "".join(a.stream_grounded("怎么解压文件？", ["", " "], "p")) == NOTHING["zh"]


def test_stream_grounded_stops_when_cancelled():
    a = ExtractiveAnswerer()
    q = "How can I list the files of an installed package?"
    cancel = threading.Event()
    cancel.set()
    assert list(a.stream_grounded(q, [ANSWER], "p", GenerationOptions(cancel=cancel))) == []
    cancel = threading.Event()
    got = []
    for piece in a.stream_grounded(q, [DISTRACTOR, ANSWER], "p", GenerationOptions(cancel=cancel)):
        got.append(piece)
        cancel.set()  # set after the first piece: nothing more comes
    assert len(got) == 1 and got[0] == "From the documents:\n"


@pytest.mark.parametrize(
    ("prompt", "lang"),
    [
        ("Explain tar.", "en"),
        ("解释一下 tar。", "zh"),
        (
            [
                {"role": "user", "content": "怎么解压？"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "And then what?"},
            ],
            "en",
        ),
        ([{"role": "user", "content": "How?"}, {"role": "user", "content": "那么怎么办？"}], "zh"),
        ([], "en"),
    ],
)
def test_plain_stream_has_nothing_to_quote_and_says_so_in_the_last_user_language(prompt, lang):
    a = ExtractiveAnswerer()
    assert a.generate(prompt) == NOTHING[lang]
    cancel = threading.Event()
    cancel.set()
    assert list(a.stream(prompt, GenerationOptions(cancel=cancel))) == []


def test_constructor_keeps_its_signature():
    sim = lambda q, texts: [0.0] * len(texts)  # noqa: E731
    a = ExtractiveAnswerer(sim, frozenset({"en", "zh"}), 300, max_units=3)
    assert (a.similarity, a.covered_languages, a.max_chars, a.max_units) == (sim, frozenset({"en", "zh"}), 300, 3)


def test_long_sentence_quoted_as_its_matching_clauses():
    # a 300-character sentence would spend half the answer; only the clauses about the question are quoted
    filler = ", ".join(f"unrelated remark number {i} about something else" for i in range(6))
    text = f"In this release, {filler}, and copy2() keeps the modification time of the file, as documented."
    quote = select("Which function keeps the modification time?", [text])[0].text
    assert "copy2() keeps the modification time" in quote
    assert len(quote) <= 125 and quote.startswith("…")
    assert quote.strip("…") in text  # still verbatim: a run of the sentence's own characters


def test_clip_to_clauses_keeps_text_that_fits_or_does_not_match():
    from docqa.generate.scoring import clip_to_clauses, question_terms

    terms = question_terms("How do I mount a partition?")
    assert clip_to_clauses("Short sentence.", terms, 120) == "Short sentence."
    no_match = "Alpha, beta, gamma, delta, " * 8
    assert clip_to_clauses(no_match, terms, 40) == no_match
    zh = "若未给定选项参数，则默认使用描述符，" * 3 + "挂载分区请编辑 /etc/fstab 文件。"
    out = clip_to_clauses(zh, question_terms("怎么挂载分区？"), 30)
    assert out.startswith("…") and "挂载分区请编辑 /etc/fstab 文件。" in out


def test_sentence_introducing_a_command_is_quoted_whole():
    intro = (
        "To create a virtual environment, decide upon a directory where you want to place it, and run the "
        "venv module as a script with the directory path:"
    )
    text = f"{intro}\n\npython3 -m venv tutorial-env\n\nThis creates the directory."
    quotes = [q.text for q in select("How do I create a virtual environment?", [text])]
    assert intro in quotes and "python3 -m venv tutorial-env" in quotes
