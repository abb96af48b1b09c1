"""CPU tile emulator (being written)."""


def launch(stream, grid, kernel, args):
    raise NotImplementedError("the CPU emulator is not written yet")
