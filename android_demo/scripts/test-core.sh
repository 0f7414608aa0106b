#!/usr/bin/env bash
# Compile android_demo/core (pure Kotlin, no Android) and its JUnit tests with Debian's kotlinc and run them on
# the JVM against the conformance vectors in core/src/test/resources/vectors. Installs the `kotlin` and `junit4`
# packages with apt-get when they are missing (needs root). Exits non-zero when a test fails.
# Usage: android_demo/scripts/test-core.sh [TestClass ...]   (default: every *Test class)
set -euo pipefail
cd "$(dirname "$0")/../core"

if ! command -v kotlinc >/dev/null 2>&1 || [ ! -f /usr/share/java/junit4.jar ]; then
    echo "test-core: installing kotlin and junit4 with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q kotlin junit4 >&2 || { apt-get update -q >&2 && apt-get install -y -q kotlin junit4 >&2; }
fi

CP_TEST=/usr/share/java/junit4.jar:/usr/share/java/hamcrest-core.jar
BUILD=${TEST_CORE_BUILD:-build/test-core}
mkdir -p "$BUILD"
JAR="$BUILD/core-tests.jar"
rm -f "$JAR"

# kotlinc 1.3.31 runs on JDK 17 with a harmless "-Xverify:none" warning; keep its output to errors and warnings.
echo "test-core: compiling $(find src/main/kotlin src/test/kotlin -name '*.kt' | wc -l) Kotlin files" >&2
nice kotlinc src/main/kotlin src/test/kotlin -cp "$CP_TEST" -include-runtime -d "$JAR" 2>&1 \
    | grep -v -e "Options -Xverify:none" -e "is deprecated. This member is not fully supported" || true
[ -f "$JAR" ] || { echo "test-core: compilation failed" >&2; exit 1; }

if [ "$#" -gt 0 ]; then
    CLASSES=("$@")
else
    mapfile -t CLASSES < <(grep -rhoE '^class [A-Za-z]+Test\b' src/test/kotlin | sed 's/^class /com.raluedge.core./' | sort)
fi
echo "test-core: running ${#CLASSES[@]} test classes" >&2
LOG="$BUILD/junit.log"
status=0
java -Dvectors.dir="$PWD/src/test/resources/vectors" -cp "$JAR:$CP_TEST" org.junit.runner.JUnitCore "${CLASSES[@]}" \
    | tee "$LOG" || status=$?
# A closing line CI can read: "core: N passed, M failed".
if ok=$(grep -oE '^OK \([0-9]+ tests?\)' "$LOG"); then
    echo "core: $(echo "$ok" | grep -oE '[0-9]+') passed, 0 failed"
elif summary=$(grep -oE '^Tests run: [0-9]+, +Failures: [0-9]+' "$LOG"); then
    run=$(echo "$summary" | grep -oE '[0-9]+' | head -1)
    failed=$(echo "$summary" | grep -oE '[0-9]+' | tail -1)
    echo "core: $((run - failed)) passed, $failed failed"
    status=1
else
    echo "test-core: JUnit did not report a result" >&2
    status=1
fi
exit "$status"
