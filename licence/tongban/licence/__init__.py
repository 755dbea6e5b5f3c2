"""Electronic licences (电子证照): types, issuance, status lists, QR, rendering, verification."""
