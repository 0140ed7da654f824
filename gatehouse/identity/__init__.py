"""Identity maintenance: the contact-hygiene report, repair by email, admin member actions."""
