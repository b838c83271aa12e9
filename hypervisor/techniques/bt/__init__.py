"""Binary translation, the VMware answer (issue 9, being built): the guest kernel's code never runs
as written. ``classify`` decides what each instruction becomes, ``translator`` turns a guest
basic block into code for the translation cache, and ``cache`` places blocks, chains them and
resolves indirect branches with a lookup stub written in x86. docs/architecture.md, "Binary
translation", has the design and what is not built yet: the ``bt`` technique that runs guests
with them is not registered.
"""
