"""Guest memory as the guest's CPU sees it: linear addresses, page tables, and (later) the P2M,
shadow page tables and EPT that stand between a guest and machine memory."""
from .walker import GuestAddressSpace, Paging, translate

__all__ = ["GuestAddressSpace", "Paging", "translate"]
