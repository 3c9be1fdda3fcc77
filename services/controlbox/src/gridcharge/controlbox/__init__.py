"""gridcharge controlbox: §14a EnWG dimming commands from the site's control box as external limits."""
