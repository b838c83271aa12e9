"""COM1's 16550A: reset values, the DLAB latch, FIFO bits in IIR, loopback and the
transmit/receive interrupts, all as QEMU 7.2's serial.c shows them to a guest."""
from hypervisor.machine.devices.uart import Uart16550

BASE = 0x3F8
RBR = THR = DLL = BASE
IER = DLM = BASE + 1
IIR = FCR = BASE + 2
LCR, MCR, LSR, MSR, SCR = BASE + 3, BASE + 4, BASE + 5, BASE + 6, BASE + 7


class Wire:
    def __init__(self):
        self.levels = []

    def __call__(self, level):
        self.levels.append(level)

    @property
    def level(self):
        return bool(self.levels) and self.levels[-1]


def make():
    sent, irq = [], Wire()
    uart = Uart16550(sent.append, irq)
    return uart, sent, irq


def rd(uart, port):
    return uart.read(port, 1)


def wr(uart, port, value):
    uart.write(port, 1, value)


def test_reset_values_match_qemu():
    uart, _, irq = make()
    assert rd(uart, IER) == 0x00
    assert rd(uart, IIR) == 0x01          # no interrupt pending, FIFOs off
    assert rd(uart, LCR) == 0x00
    assert rd(uart, MCR) == 0x08          # OUT2
    assert rd(uart, LSR) == 0x60          # THR empty + transmitter empty
    assert rd(uart, MSR) == 0xB0          # DCD, DSR, CTS
    assert rd(uart, SCR) == 0x00
    assert not irq.level


def test_dlab_selects_divisor_latch_and_reads_it_back():
    uart, sent, _ = make()
    wr(uart, LCR, 0x80)
    assert (rd(uart, DLL), rd(uart, DLM)) == (0x0C, 0x00)   # 9600 baud at reset
    wr(uart, DLL, 0x01)
    wr(uart, DLM, 0x02)
    assert (rd(uart, DLL), rd(uart, DLM)) == (0x01, 0x02)
    assert sent == [] and rd(uart, IER) == 0x02             # IER not touched
    wr(uart, LCR, 0x03)
    assert rd(uart, LCR) == 0x03
    assert rd(uart, IER) == 0x00


def test_scratch_register_holds_any_byte():
    uart, _, _ = make()
    wr(uart, SCR, 0xA5)
    assert rd(uart, SCR) == 0xA5


def test_ier_keeps_only_its_four_bits_and_mcr_five():
    uart, _, _ = make()
    wr(uart, IER, 0xF0)
    assert rd(uart, IER) == 0x00
    wr(uart, MCR, 0xFF)
    assert rd(uart, MCR) == 0x1F


def test_iir_shows_c0_when_fifos_enabled_and_not_otherwise():
    uart, _, _ = make()
    wr(uart, FCR, 0x07)
    assert rd(uart, IIR) == 0xC1
    wr(uart, FCR, 0x00)
    assert rd(uart, IIR) == 0x01


def test_thr_byte_goes_to_tx_and_line_is_idle_again():
    uart, sent, _ = make()
    for byte in b"ok\n":
        wr(uart, THR, byte)
    assert bytes(sent) == b"ok\n"
    assert rd(uart, LSR) == 0x60


def test_thr_empty_interrupt_raises_on_enable_and_clears_on_iir_read():
    uart, _, irq = make()
    wr(uart, IER, 0x02)
    assert irq.level
    assert rd(uart, IIR) == 0x02
    assert not irq.level                  # reading IIR acknowledged it
    assert rd(uart, IIR) == 0x01


def test_each_transmitted_byte_gives_a_fresh_thr_empty_edge():
    uart, _, irq = make()
    wr(uart, IER, 0x02)
    rd(uart, IIR)
    irq.levels.clear()
    wr(uart, THR, ord("x"))
    assert irq.levels == [True]
    assert rd(uart, IIR) == 0x02


def test_fed_byte_sets_data_ready_and_rx_interrupt():
    uart, _, irq = make()
    wr(uart, IER, 0x01)
    uart.feed(b"A")
    assert rd(uart, LSR) & 0x01
    assert irq.level and rd(uart, IIR) == 0x04
    assert rd(uart, RBR) == ord("A")
    assert not rd(uart, LSR) & 0x01 and not irq.level


def test_without_fifo_bytes_enter_one_at_a_time_as_the_guest_reads():
    uart, _, _ = make()
    uart.feed(b"xyz")
    assert uart.pending_input == 2
    assert bytes(rd(uart, RBR) for _ in range(3)) == b"xyz"
    assert not rd(uart, LSR) & 0x03       # no data left, no overrun


def test_fifo_below_trigger_level_reports_character_timeout():
    uart, _, irq = make()
    wr(uart, FCR, 0xC1)                   # FIFO on, trigger at 14
    wr(uart, IER, 0x01)
    uart.feed(b"ab")
    assert rd(uart, IIR) == 0xCC
    assert rd(uart, RBR) == ord("a")
    assert rd(uart, RBR) == ord("b")
    assert rd(uart, IIR) == 0xC1 and not irq.level


def test_fifo_at_trigger_level_reports_received_data():
    uart, _, _ = make()
    wr(uart, FCR, 0x41)                   # trigger at 4
    wr(uart, IER, 0x01)
    uart.feed(bytes(range(20)))
    assert len(uart.rx_fifo) == 16 and uart.pending_input == 4
    assert rd(uart, IIR) == 0xC4


def test_loopback_returns_transmitted_byte_and_wires_msr_to_mcr():
    uart, sent, _ = make()
    wr(uart, MCR, 0x10 | 0x0B)            # loop, OUT2, RTS, DTR
    assert rd(uart, MSR) == 0x80 | 0x10 | 0x20
    wr(uart, THR, 0x55)
    assert sent == []
    assert rd(uart, LSR) & 0x01 and rd(uart, RBR) == 0x55


def test_double_receive_without_fifo_sets_overrun_once():
    uart, _, _ = make()
    wr(uart, MCR, 0x10)
    wr(uart, THR, 1)
    wr(uart, THR, 2)
    assert rd(uart, LSR) & 0x02
    assert not rd(uart, LSR) & 0x02       # reading LSR cleared it
    assert rd(uart, RBR) == 2
