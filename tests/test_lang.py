from docqa.lang import detect_language


def test_detect_language():
    assert detect_language("怎么解压 tar.gz 文件？") == "zh"
    assert detect_language("grep 的 -w 选项是什么意思？") == "zh"  # Chinese words around code still Chinese
    assert detect_language("How do I use tar -xzf?") == "en"
    assert detect_language("") == "en"
