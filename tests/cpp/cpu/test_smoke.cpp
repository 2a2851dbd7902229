#include <gtest/gtest.h>
#include "flashattn/flashattn.h"
TEST(Smoke, BuildInfo) { EXPECT_FALSE(flashattn::build_info().version.empty()); }
