"""glassformer's reader of the GGUF container (``checkpoints/gguf_file.py``) on damaged and hostile headers: each is
refused in one line naming the file, before anything as large as the header claims is allocated. (That it reads
what ``gguf.GGUFReader`` reads is tested on a written file in ``tests/nn/test_quantization.py``.)"""

import struct

import pytest

from glassformer.checkpoints.gguf import open_gguf

HEADER = b"GGUF" + struct.pack("<I", 3)
ONE_KEY = HEADER + struct.pack("<QQ", 0, 1) + struct.pack("<Q", 1) + b"k"
CASES = {
    "a tensor count past the file": (HEADER + struct.pack("<QQ", 2**62, 0), "ends inside its header"),
    "a string longer than the file": (HEADER + struct.pack("<QQQ", 0, 1, 2**60), "runs past the end of the file"),
    "an array longer than the file": (ONE_KEY + struct.pack("<IIQ", 9, 4, 2**40), "runs past the end of the file"),
    "an unknown value type": (ONE_KEY + struct.pack("<I", 99), "unknown metadata value type 99"),
    "a tensor larger than the file": (
        HEADER + struct.pack("<QQQ", 1, 0, 1) + b"t" + struct.pack("<IQQIQ", 2, 2**40, 2**40, 0, 0),
        "tensor t runs past the end of the file",
    ),
    "a big-endian file": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
    "another format": (b"PK\x03\x04" + bytes(40), "does not start with GGUF"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_header_is_one_line_naming_the_file(tmp_path, case):
    data, words = CASES[case]
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    with pytest.raises(ValueError) as error:
        open_gguf(path)
    message = str(error.value)
    assert "\n" not in message and "model.gguf is not a readable GGUF file" in message and words in message
