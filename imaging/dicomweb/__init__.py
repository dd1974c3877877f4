"""DICOMweb (and DIMSE) exchange with a hospital archive: connect, pull studies, push results.

``client``: connection and credentials (never from the command line); ``pull``:
QIDO-RS query + WADO-RS retrieve into a local export; ``push``: STOW-RS (or
C-STORE) of SEGs back. dicomweb-client and pynetdicom do the protocols.
"""
