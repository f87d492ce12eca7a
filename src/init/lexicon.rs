//! Word lists for the built-in corpus; wide enough for a 4096-token vocabulary.
//!
//! Kept as space-separated strings: a few kilobytes of source instead of a
//! thousand array literals.

/// Common concrete and abstract nouns, singular.
pub(crate) const NOUNS: &str = "time year way day thing life child world school state family \
student group country problem hand part place case week company system program question work \
number night point home water room mother area money story fact month lot right study book eye \
job word business issue side kind head house service friend father power hour game line end member \
law car city community name team minute idea body information back parent face level office door \
health person art history party result change morning reason research girl moment air teacher \
force education foot boy age music market sense nation plan college interest experience effect \
class control care field development role effort rate heart show leader light voice police mind \
price report decision son view relationship town road arm difference value building action model \
season society director position player record paper space ground form event matter center couple \
project activity star table need court oil situation cost industry figure street image phone data \
picture practice piece land product doctor wall patient worker news test movie love support \
technology step baby computer type attention film tree source organization hair window evidence \
island bridge garden river mountain valley ocean desert forest village castle bottle basket candle \
pocket letter ticket jacket blanket pillow mirror ladder hammer bucket engine rocket planet dragon \
wizard knight queen king prince farmer baker sailor pilot painter singer dancer writer nurse driver \
tiger lion zebra monkey turtle rabbit squirrel penguin dolphin whale shark parrot spider butterfly \
elephant giraffe kangaroo camel donkey chicken sheep cow pig horse puppy kitten cloud storm thunder \
rain snow wind sunshine rainbow shadow summer autumn spring winter holiday birthday breakfast \
dinner lunch sandwich pizza soup salad cheese bread butter honey sugar salt pepper tomato potato \
carrot onion banana cherry grape lemon melon peach pear strawberry chocolate coffee tea juice milk \
violin piano guitar drum trumpet flute song poem novel chapter sentence paragraph alphabet \
dictionary library museum theater stadium airport harbor hospital factory bakery pharmacy kitchen \
bedroom bathroom hallway balcony roof chimney fence gate path bench fountain statue tower cottage \
cabin tent campfire lantern compass map treasure journey adventure mystery puzzle riddle secret \
promise dream wish surprise gift prize medal trophy scientist engineer teacher student uncle aunt \
cousin neighbor stranger captain soldier merchant carpenter gardener fisherman shepherd astronaut \
detective inventor professor librarian mechanic plumber electrician architect musician athlete \
volcano glacier canyon meadow swamp jungle prairie cliff cave waterfall pond stream creek beach \
shore reef lighthouse windmill barn stable orchard vineyard greenhouse workshop warehouse \
apartment neighborhood avenue highway tunnel railway station platform carriage wagon bicycle \
motorcycle helicopter submarine sailboat canoe kayak parachute balloon umbrella raincoat sweater \
scarf glove boot sandal sneaker necklace bracelet earring crown helmet shield sword arrow bow \
telescope microscope magnet battery calculator keyboard screen printer camera radio television \
notebook pencil eraser crayon marker ruler scissors envelope stamp parcel package newspaper \
magazine calendar clock watch alarm schedule recipe ingredient oven stove fridge freezer sink \
cupboard drawer shelf closet carpet curtain sofa armchair cushion lamp candle vase flowerpot";

/// Verbs in their base form, so that "to", "can" and "will" frame them correctly.
pub(crate) const VERBS: &str = "have do say go get make know think take see come want look use \
find give tell work call try ask need feel become leave put mean keep let begin seem help talk \
turn start show hear play run move like live believe hold bring happen write provide sit stand \
lose pay meet include continue set learn change lead understand watch follow stop create speak \
read allow add spend grow open walk win offer remember love consider appear buy wait serve send \
expect build stay fall cut reach remain suggest raise pass sell require report decide pull return \
explain hope develop carry break receive agree support hit produce eat cover catch draw choose \
cause point listen realize place close involve increase teach throw shake climb swim jump dance \
sing paint cook bake clean wash fix borrow count measure divide multiply subtract compare solve \
check guess discover explore travel visit invite share collect gather plant water feed chase \
hide seek laugh smile shout whisper answer lend save earn trade fill empty pour mix stir taste \
smell touch push lift drop kick roll fold wrap pack hang sweep dig knock ring repair organize \
prepare describe imagine recognize celebrate protect rescue deliver arrange estimate calculate \
observe predict record pretend wonder notice practice improve finish complete attend enjoy \
forgive borrow whistle sneeze yawn stretch wander hurry relax breathe float sink melt freeze";

/// Adjectives of size, colour, weather, mood and character.
pub(crate) const ADJECTIVES: &str =
    "good new first last long great little own other old right big \
high different small large next early young important few public bad same able free sure full \
special easy clear recent certain personal open red difficult available likely short single \
current wrong private past foreign fine common poor natural similar hot central happy serious \
ready simple physical general blue dark various entire close legal cold final main green nice \
huge popular traditional wide deep heavy light soft hard smooth rough sweet sour bitter salty \
fresh quiet loud bright dull rich thin thick round square flat sharp gentle brave clever proud \
shy lazy busy calm angry tired hungry thirsty sleepy silly funny strange famous ancient modern \
tiny giant golden silver wooden purple orange yellow pink brown gray white black striped spotted \
shiny dusty muddy sunny rainy windy snowy cloudy stormy foggy warm cool wet dry empty crowded \
lonely friendly curious careful honest polite kind patient noisy messy tidy generous cheerful \
grumpy nervous excited delighted surprised worried confident gentle elegant enormous fragile \
delicious fancy plain precious mysterious magical wonderful terrible awful lovely peaceful \
narrow steep shallow distant hidden broken cheap expensive ordinary unusual";

/// Adverbs of manner, frequency and time.
pub(crate) const ADVERBS: &str = "quickly slowly carefully quietly loudly happily sadly easily \
gently suddenly finally usually often always never sometimes rarely soon later today tomorrow \
yesterday together again early late \
everywhere somewhere outside inside upstairs downstairs nearby eagerly proudly bravely politely \
patiently calmly cheerfully nervously secretly silently";

/// First halves of invented English-looking place names.
pub(crate) const TOWN_HEADS: &str =
    "Ash Brook Oak Elm Stone River Green North South East West Red \
Black White Fair Glen Maple Cedar Pine Silver Gold Iron Clear Long High Mill Spring Summer Winter \
Wolf Bear Fox Deer Eagle Raven Swan Rose Lake Sand Kings Queens Bright Wind Frost Hazel Willow \
Thorn Moss Amber Copper";

/// Second halves of invented place names.
pub(crate) const TOWN_TAILS: &str = "ford ton field wood dale bury ville port bridge stead worth \
ham ley mouth burg haven brook crest view more wick gate hill side";

/// Splits one of the lists above into words.
pub(crate) fn words(list: &'static str) -> Vec<&'static str> {
    list.split_whitespace().collect()
}
