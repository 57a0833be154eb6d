"""Detection: health identifiers, dates of birth, postcodes and admin-defined patterns and terms."""

from relayguard.detect.masking import mask, mask_text
from relayguard.detect.scan import CustomDetectors, CustomPattern, TermList, scan_message

__all__ = ["CustomDetectors", "CustomPattern", "TermList", "mask", "mask_text", "scan_message"]
